// The gRPC front end (uniattn.v1.UniAttn, proto/uniattn/v1/uniattn.proto) on the callback API, plus the
// standard grpc.health.v1.Health service. Generate is a ServerWriteReactor with one write in flight; the
// engine's notifications are posted to the io_context, so the engine thread never waits on gRPC.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "server/serving.h"
#include "uniattn/status.h"

namespace uniattn::server {

class GrpcServer {
  public:
    GrpcServer(ServingState& state, boost::asio::io_context& ioc);
    ~GrpcServer();

    // Binds host:port (0 = ephemeral) and starts serving; health starts NOT_SERVING.
    Status Start(const std::string& host, int port);
    int port() const;
    // grpc.health.v1: SERVING or NOT_SERVING, for "" and "uniattn.v1.UniAttn".
    void SetServing(bool serving);
    // Cancels calls still running after `deadline` and waits for them.
    void Shutdown(std::chrono::milliseconds deadline);

  private:
    class Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace uniattn::server
