// The OpenAI-compatible HTTP/1.1 front end (Boost.Beast, asynchronous, keep-alive). Every connection is a
// session on its own strand; the engine's notifications are posted to that strand, so the engine thread
// never waits on a socket. See server/README.md for routes, limits and the disconnect rules.
#pragma once

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

#include "server/serving.h"
#include "uniattn/status.h"

namespace uniattn::server {

class HttpServer {
  public:
    HttpServer(ServingState& state, boost::asio::io_context& ioc);
    ~HttpServer();

    // Binds host:port (0 = ephemeral) and starts accepting.
    Status Start(const std::string& host, int port);
    int port() const;
    // Stops accepting; open connections finish what they are doing.
    void StopAccepting();

  private:
    class Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace uniattn::server
