#include "mpool/core/fanout.h"

#include <algorithm>
#include <string>

namespace mpool::core {

std::shared_ptr<Fanout> Fanout::create(size_t parts, Hooks hooks) {
  check(parts >= 1, ErrorCode::kInternal, "a fanout needs at least one part");
  check(hooks.window && hooks.start && hooks.complete && hooks.fail, ErrorCode::kInternal,
        "a fanout needs all four hooks");
  return std::shared_ptr<Fanout>(new Fanout(parts, std::move(hooks)));
}

Fanout::Fanout(size_t parts, Hooks hooks) : parts_(parts), hooks_(std::move(hooks)), finished_(parts, 0) {}

void Fanout::begin() { pump(); }

void Fanout::pump() {
  while (true) {
    const size_t window = std::max<size_t>(1, hooks_.window());  // no lock held: it may ask the pool
    size_t part;
    {
      std::lock_guard lock(mu_);
      if (ended_ || next_ >= parts_ || out_ >= window) return;
      part = next_++;
      ++out_;
    }
    std::function<void()> cancel;
    try {
      cancel = hooks_.start(part);
    } catch (const Error& e) {
      part_failed(part, e);
      return;
    } catch (const std::exception& e) {
      part_failed(part, Error(ErrorCode::kInternal, std::string("starting part of a call failed: ") + e.what()));
      return;
    }
    bool cancel_now = false;
    {
      std::lock_guard lock(mu_);
      if (!finished_[part]) {
        if (ended_)
          cancel_now = true;  // the call ended while this part was being queued
        else
          cancels_[part] = std::move(cancel);
      }
    }
    if (cancel_now && cancel) cancel();
  }
}

std::vector<std::function<void()>> Fanout::end_locked() {
  ended_ = true;
  std::vector<std::function<void()>> out;
  for (auto& [_, c] : cancels_) out.push_back(std::move(c));
  cancels_.clear();
  return out;
}

bool Fanout::settle_locked(size_t part) {
  if (part >= parts_ || finished_[part]) return false;
  finished_[part] = 1;
  cancels_.erase(part);
  --out_;
  return !ended_;  // a part that settles after the call ended changes nothing more
}

void Fanout::part_succeeded(size_t part) {
  bool all = false;
  {
    std::lock_guard lock(mu_);
    if (!settle_locked(part)) return;
    all = ++succeeded_ == parts_;
    if (all) ended_ = true;
  }
  if (all)
    hooks_.complete();
  else
    pump();
}

void Fanout::part_failed(size_t part, const Error& error) {
  std::vector<std::function<void()>> cancels;
  {
    std::lock_guard lock(mu_);
    if (!settle_locked(part)) return;
    cancels = end_locked();
  }
  hooks_.fail(error);
  for (auto& c : cancels)  // outside the lock: a cancel settles its part, which calls back here
    if (c) c();
}

void Fanout::close() {
  std::vector<std::function<void()>> cancels;
  {
    std::lock_guard lock(mu_);
    cancels = end_locked();
  }
  for (auto& c : cancels)
    if (c) c();
}

size_t Fanout::out() const {
  std::lock_guard lock(mu_);
  return out_;
}

bool Fanout::ended() const {
  std::lock_guard lock(mu_);
  return ended_;
}

}  // namespace mpool::core
