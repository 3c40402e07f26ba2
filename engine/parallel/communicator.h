// Collectives between the ranks of one tensor-parallel engine (parallel/tensor_parallel.h): one rank per thread of
// one process. A group of `size` communicators is made at once (MakeHostCommunicators, MakeNcclCommunicators);
// rank r's thread uses group.rank(r).
//
// Thread-safety: each communicator belongs to its rank's thread (AllReduceSum is called from that thread only);
// Abort may be called from any thread at any time; Reset from one thread while no rank is inside AllReduceSum.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

class Communicator {
  public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // data[0:n] (fp32, this rank's backend memory) becomes the element-wise sum over all ranks, the same bits on
    // every rank. Every rank calls it with the same n, in the same order of calls, each with its own buffer.
    // Host: the sum is taken in rank order ((r0 + r1) + r2) + ..., whatever the threads' timing; returns when the
    // result is in data. NCCL: enqueued on the rank's stream (returns before the sum is done); the bits are
    // NCCL's (reduce-scatter then all-gather: equal on every rank, fixed for a fixed topology and NCCL version).
    // Errors: kCancelled once the group is aborted (the call did nothing: data unchanged); kInvalidArgument when
    // the ranks disagree on n (every rank gets it; data unchanged).
    virtual Status AllReduceSum(float* data, int64_t n) = 0;
    // Aborts the whole group, not only this rank: for a rank that fails and will never make the call its peers
    // wait in. Ranks waiting in AllReduceSum, and every later call, return kCancelled. A reduction every rank
    // has already joined still completes (host), so a call never leaves some ranks summed and others not.
    // NCCL: also aborts the communicators (ncclCommAbort), which ends kernels waiting for a missing peer; the
    // group cannot be used again. Idempotent; any thread.
    virtual void Abort() = 0;
    // Makes an aborted group usable again, once no rank is inside AllReduceSum (every rank thread has returned
    // from the failed step). Host: always OK. NCCL: kFailedPrecondition after an Abort (make a new group).
    virtual Status Reset() = 0;
    // Name for logs: "host" or "nccl".
    virtual std::string Name() const = 0;
};

// The communicators of one group, rank order, owned together (the engine keeps this; ranks borrow rank(r)).
class CommunicatorGroup {
  public:
    explicit CommunicatorGroup(std::vector<std::unique_ptr<Communicator>> comms) : comms_(std::move(comms)) {}

    int size() const { return static_cast<int>(comms_.size()); }
    Communicator* rank(int r) const { return comms_[r].get(); }
    // Communicator::Abort / Reset of the group (no-ops on an empty group).
    void Abort() {
        if (!comms_.empty()) comms_[0]->Abort();
    }
    Status Reset() { return comms_.empty() ? Status::Ok() : comms_[0]->Reset(); }
    std::string Name() const { return comms_.empty() ? "none" : comms_[0]->Name(); }

  private:
    std::vector<std::unique_ptr<Communicator>> comms_;
};

// `size` (>= 1) communicators over host memory (the CPU backend) sharing one group state. Each call is two
// barrier waits (mutex and condition variable; no allocation): every rank publishes its pointer, then rank r sums
// its slice [r·n/size, (r+1)·n/size) over all ranks in rank order and writes it to every rank's buffer.
std::unique_ptr<CommunicatorGroup> MakeHostCommunicators(int size);

#ifdef UNIATTN_HAVE_CUDA
// NCCL communicators for the CUDA backend, one per device of this process (ncclCommInitAll over `devices`, rank r
// on devices[r], distinct), enqueueing on streams[r] (a cudaStream_t; null: the legacy default stream). libnccl
// is loaded at run time (dlopen "libnccl.so.2"; nothing links -lnccl): kUnavailable "libnccl.so.2 not found ..."
// without it, kUnavailable naming NCCL's error when initialisation fails (no GPU, bad device), kInvalidArgument for
// an empty, repeated or negative device list or a stream count that differs from it. Call from one thread.
// NVLink multicast (NVLS) must stay off: on the shared multi-GPU hosts this runs on, a program using it can put
// every GPU of the host out of service for a long time. NCCL_NVLS_ENABLE=0 is set before init unless the
// environment already has a value (setenv without overwrite keeps an operator's explicit choice).
StatusOr<std::unique_ptr<CommunicatorGroup>> MakeNcclCommunicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams);
#endif

}  // namespace uniattn
