// The load generator of bench/webhooks: sends pre-built HTTP requests from a file with a fixed
// number in flight, one per keep-alive connection, on one epoll thread, and prints one JSON line
// {"events", "ok", "other", "elapsed_s", "cpu_s"}. It does no per-request work beyond copying
// bytes, so it leaves the shared cores to the receiver being measured.
//   sender HOST PORT IN_FLIGHT REQUESTS_FILE   (the file: [u32 little-endian length][bytes]...)
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

struct Conn {
  int fd = -1;
  const std::string* out = nullptr;
  std::size_t sent = 0;
  std::string in;
};

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// The length of one complete response at the front of `in`, or 0 while it is incomplete.
std::size_t response_length(const std::string& in, int& status) {
  const auto end = in.find("\r\n\r\n");
  if (end == std::string::npos) return 0;
  status = std::atoi(in.c_str() + 9);
  std::size_t length = 0;
  for (std::size_t at = in.find("\r\n"); at < end; at = in.find("\r\n", at + 2)) {
    if (strncasecmp(in.c_str() + at + 2, "content-length:", 15) == 0) length = std::strtoul(in.c_str() + at + 17, nullptr, 10);
  }
  const std::size_t total = end + 4 + length;
  return in.size() >= total ? total : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: sender HOST PORT IN_FLIGHT REQUESTS_FILE\n");
    return 2;
  }
  const int port = std::atoi(argv[2]);
  const int in_flight = std::atoi(argv[3]);
  std::ifstream f(argv[4], std::ios::binary);
  std::vector<std::string> requests;
  for (;;) {
    std::uint32_t n = 0;
    if (!f.read(reinterpret_cast<char*>(&n), 4)) break;
    std::string r(n, '\0');
    if (!f.read(r.data(), n)) die("requests file");
    requests.push_back(std::move(r));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) die("host");

  const int ep = epoll_create1(0);
  std::vector<Conn> conns(static_cast<std::size_t>(std::min<int>(in_flight, static_cast<int>(requests.size()))));
  std::size_t next = 0, done = 0, ok = 0, other = 0;
  auto send_more = [&](Conn& c) {
    while (c.sent < c.out->size()) {
      const ssize_t w = ::send(c.fd, c.out->data() + c.sent, c.out->size() - c.sent, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) return;
        die("send");
      }
      c.sent += static_cast<std::size_t>(w);
    }
  };
  auto assign = [&](Conn& c) {
    if (next >= requests.size()) return false;
    c.out = &requests[next++];
    c.sent = 0;
    send_more(c);
    return true;
  };
  for (std::size_t i = 0; i < conns.size(); ++i) {
    Conn& c = conns[i];
    c.fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (c.fd < 0 || ::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("connect");
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c.fd, F_SETFL, O_NONBLOCK);
    epoll_event e{};
    e.events = EPOLLIN | EPOLLOUT | EPOLLET;
    e.data.u64 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &e);
  }
  const double cpu0 = cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& c : conns) assign(c);
  std::vector<epoll_event> events(conns.size());
  char buf[65536];
  while (done < requests.size()) {
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 30000);
    if (n == 0) {
      std::fprintf(stderr, "no answer for 30 s (%zu of %zu done)\n", done, requests.size());
      return 1;
    }
    for (int k = 0; k < n; ++k) {
      Conn& c = conns[events[k].data.u64];
      if (events[k].events & EPOLLOUT && c.out) send_more(c);
      if (!(events[k].events & EPOLLIN)) continue;
      for (;;) {
        const ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) {
          std::fprintf(stderr, "connection closed by the receiver (%zu of %zu done)\n", done, requests.size());
          return 1;
        }
        c.in.append(buf, static_cast<std::size_t>(r));
      }
      int status = 0;
      while (std::size_t len = response_length(c.in, status)) {
        c.in.erase(0, len);
        ++done;
        (status == 200 ? ok : other)++;
        if (!assign(c)) c.out = nullptr;
      }
    }
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"events\": %zu, \"ok\": %zu, \"other\": %zu, \"elapsed_s\": %.6f, \"cpu_s\": %.6f}\n", done, ok,
              other, elapsed, cpu_seconds() - cpu0);
  return 0;
}
