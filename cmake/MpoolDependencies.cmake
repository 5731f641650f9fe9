# System dependencies shared by every target. scripts/setup.sh installs them;
# each failure below says which package is missing.
find_package(Threads REQUIRED)

find_package(TBB CONFIG QUIET)
if(NOT TBB_FOUND)
  message(FATAL_ERROR "oneTBB not found. Install it (Debian: apt-get install libtbb-dev) "
                      "or point TBB_DIR at its TBBConfig.cmake; scripts/setup.sh does this for you.")
endif()

find_package(nlohmann_json 3.10 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "nlohmann_json not found. Install it (Debian: apt-get install nlohmann-json3-dev); "
                      "scripts/setup.sh does this for you.")
endif()

find_package(Eigen3 3.3 CONFIG QUIET)
if(NOT Eigen3_FOUND)
  message(FATAL_ERROR "Eigen 3 not found. Install it (Debian: apt-get install libeigen3-dev); "
                      "scripts/setup.sh does this for you.")
endif()

find_package(PkgConfig REQUIRED)
pkg_check_modules(STB IMPORTED_TARGET stb)
if(NOT STB_FOUND)
  message(FATAL_ERROR "stb_image not found (Debian: apt-get install libstb-dev); scripts/setup.sh installs it.")
endif()
pkg_check_modules(WEBP IMPORTED_TARGET libwebp)
if(NOT WEBP_FOUND)
  message(FATAL_ERROR "libwebp not found (Debian: apt-get install libwebp-dev); scripts/setup.sh installs it.")
endif()
pkg_check_modules(EXIF IMPORTED_TARGET libexif)
if(NOT EXIF_FOUND)
  message(FATAL_ERROR "libexif not found (Debian: apt-get install libexif-dev); scripts/setup.sh installs it.")
endif()
find_package(CURL)
if(NOT CURL_FOUND)
  message(FATAL_ERROR "libcurl headers not found (Debian: apt-get install libcurl4-openssl-dev); scripts/setup.sh installs it.")
endif()
