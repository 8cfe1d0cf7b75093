#include <utility>  // before Asio: Boost 1.74 + GCC 12 in C++20

#include "support/loopback_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <stdexcept>
#include <thread>

namespace isthmus::testing {
namespace {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

}  // namespace

struct CannedServer::Impl {
  std::string raw;
  asio::io_context io{1};
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  std::thread thread;

  asio::awaitable<void> accept_loop() {
    for (;;) {
      tcp::socket s = co_await acceptor.async_accept(use_awaitable);
      asio::co_spawn(io, answer(std::move(s)), [](std::exception_ptr) {});
    }
  }

  asio::awaitable<void> answer(tcp::socket s) {
    std::string request;
    co_await asio::async_read_until(s, asio::dynamic_buffer(request), "\r\n\r\n", use_awaitable);
    co_await asio::async_write(s, asio::buffer(raw), use_awaitable);
    s.shutdown(tcp::socket::shutdown_send);
  }
};

CannedServer::CannedServer(std::string raw) : impl_(std::make_unique<Impl>()) {
  impl_->raw = std::move(raw);
  asio::co_spawn(impl_->io, impl_->accept_loop(), [](std::exception_ptr) {});
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

CannedServer::~CannedServer() {
  impl_->io.stop();
  impl_->thread.join();
}

std::string CannedServer::url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(impl_->acceptor.local_endpoint().port()) + path;
}

BlackholeListener::BlackholeListener() {
  listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(0);
  if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 0) != 0)
    throw std::runtime_error("blackhole listener");
  socklen_t len = sizeof a;
  ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  // Never accept, and fill the queue: the kernel then drops later SYNs and connects hang.
  for (auto& f : fillers_) {
    f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ++filler_count_;
  }
}

BlackholeListener::~BlackholeListener() {
  for (int i = 0; i < filler_count_; ++i) ::close(fillers_[i]);
  ::close(listener_);
}

std::uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(0);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace isthmus::testing
