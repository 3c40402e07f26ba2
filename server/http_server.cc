// The HTTP front end's listener: accepts connections and gives each its session (server/http_session.h).
#include "server/http_server.h"

#include <spdlog/spdlog.h>

#include <boost/asio/strand.hpp>

#include "server/http_session.h"

namespace uniattn::server {

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
  public:
    Impl(ServingState& state, net::io_context& ioc) : state_(state), ioc_(ioc), acceptor_(ioc), retry_(ioc) {}

    Status Start(const std::string& host, int port) {
        beast::error_code ec;
        const auto address = net::ip::make_address(host, ec);
        if (ec) return InvalidArgument("server.host: '" + host + "' is not an IP address");
        const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
        acceptor_.open(endpoint.protocol(), ec);
        if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
        if (!ec) acceptor_.bind(endpoint, ec);
        if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
        if (ec) {
            return Unavailable("cannot listen for HTTP on " + host + ":" + std::to_string(port) + ": " + ec.message());
        }
        port_ = acceptor_.local_endpoint().port();
        Accept();
        return Status::Ok();
    }

    void Accept() {
        acceptor_.async_accept(net::make_strand(ioc_),
                               [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                                   if (ec == net::error::operation_aborted || !self->acceptor_.is_open()) return;
                                   if (ec) {
                                       // Out of file descriptors and the like: back off instead of spinning.
                                       spdlog::warn("accept failed: {}", ec.message());
                                       self->retry_.expires_after(std::chrono::milliseconds(100));
                                       self->retry_.async_wait([self](beast::error_code) { self->Accept(); });
                                       return;
                                   }
                                   beast::error_code ignored;
                                   socket.set_option(tcp::no_delay(true), ignored);
                                   std::make_shared<HttpSession>(std::move(socket), self->state_)->Run();
                                   self->Accept();
                               });
    }

    void Stop() {
        net::post(ioc_, [self = shared_from_this()] {
            beast::error_code ec;
            self->acceptor_.close(ec);
            self->retry_.cancel();
        });
    }

    int port() const { return port_; }

  private:
    ServingState& state_;
    net::io_context& ioc_;
    tcp::acceptor acceptor_;
    net::steady_timer retry_;
    int port_ = 0;
};

HttpServer::HttpServer(ServingState& state, net::io_context& ioc) : impl_(std::make_shared<Impl>(state, ioc)) {}
HttpServer::~HttpServer() = default;
Status HttpServer::Start(const std::string& host, int port) { return impl_->Start(host, port); }
int HttpServer::port() const { return impl_->port(); }
void HttpServer::StopAccepting() { impl_->Stop(); }

}  // namespace uniattn::server
