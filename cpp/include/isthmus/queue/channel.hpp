// A bounded channel between producers on I/O threads and one consumer thread.
//
// The capacity is fixed: a full channel refuses the item instead of growing. A producer on an
// I/O thread never blocks: `push` either takes the item or answers `full` and arms a callback
// that fires once, when a `pop` has made room (or on `close`), so the producer pauses its
// intake and resumes on drain. The consumer blocks in `pop(timeout)` (from Python, with the
// GIL released). `close` wakes everyone: the consumer still drains what is queued, then sees
// `closed`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace isthmus::queue {

template <class T>
class Channel {
 public:
  enum class Push { ok, full, closed };
  enum class Pop { ok, timeout, closed };

  explicit Channel(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Takes `item` when there is room. When full, leaves `item` untouched and, when `on_room` is
  // given, arms it: it is called once, outside the channel's lock, by the thread whose pop
  // made room (or by close()). Arming and the full check are one step, so a pop that races
  // with a refused push can never be missed.
  Push push(T& item, std::function<void()> on_room = {}) {
    {
      std::lock_guard lock(m_);
      if (closed_) return Push::closed;
      if (items_.size() >= capacity_) {
        if (on_room) waiting_.push_back(std::move(on_room));
        return Push::full;
      }
      items_.push_back(std::move(item));
    }
    readable_.notify_one();
    return Push::ok;
  }
  Push push(T&& item, std::function<void()> on_room = {}) { return push(item, std::move(on_room)); }

  // Waits up to `timeout` for an item. Queued items are still handed out after close().
  template <class Rep, class Period>
  Pop pop(T& out, std::chrono::duration<Rep, Period> timeout) {
    std::vector<std::function<void()>> wake;
    {
      std::unique_lock lock(m_);
      if (!readable_.wait_for(lock, timeout, [&] { return !items_.empty() || closed_; }))
        return Pop::timeout;
      if (items_.empty()) return Pop::closed;
      out = std::move(items_.front());
      items_.pop_front();
      // Every paused producer hears about the room; one fills it, the others find it full
      // again and re-arm. Their number is bounded by the producers, not by the items.
      wake.swap(waiting_);
    }
    for (auto& fn : wake) fn();
    return Pop::ok;
  }

  // Refuses further pushes, wakes the consumer and every paused producer. Idempotent.
  void close() {
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lock(m_);
      closed_ = true;
      wake.swap(waiting_);
    }
    readable_.notify_all();
    for (auto& fn : wake) fn();
  }

  // Drops what is queued (a consumer that gives up); paused producers are not resumed.
  void clear() {
    std::lock_guard lock(m_);
    items_.clear();
  }

  bool closed() const {
    std::lock_guard lock(m_);
    return closed_;
  }
  std::size_t size() const {
    std::lock_guard lock(m_);
    return items_.size();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  const std::size_t capacity_;
  mutable std::mutex m_;
  std::condition_variable readable_;
  std::deque<T> items_;
  std::vector<std::function<void()>> waiting_;
  bool closed_ = false;
};

}  // namespace isthmus::queue
