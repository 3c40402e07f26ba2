// NCCL communicators (communicator.h), with libnccl loaded at run time so that CUDA builds link and run on
// machines without it. Compiled into CUDA builds only (UNIATTN_HAVE_CUDA); the globbed source list takes it
// everywhere, so the whole file is inside the #ifdef.
#ifdef UNIATTN_HAVE_CUDA

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <set>

#include "parallel/communicator.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define UNIATTN_NCCL_HEADER 1
#endif

namespace uniattn {
namespace {

// The slice of NCCL's C ABI used here, declared locally so that no NCCL header is needed to build (nccl.h is
// checked against it below when it is there). Handles and streams are opaque pointers.
using NcclResult = int;    // ncclResult_t
using NcclComm = void*;    // ncclComm_t
using CudaStream = void*;  // cudaStream_t
constexpr NcclResult kNcclSuccess = 0;
constexpr int kNcclFloat32 = 7;  // ncclDataType_t
constexpr int kNcclSum = 0;      // ncclRedOp_t

#ifdef UNIATTN_NCCL_HEADER
static_assert(kNcclSuccess == ncclSuccess && kNcclFloat32 == ncclFloat32 && kNcclSum == ncclSum);
static_assert(sizeof(ncclResult_t) == sizeof(NcclResult) && sizeof(ncclDataType_t) == sizeof(int) &&
              sizeof(ncclRedOp_t) == sizeof(int));
#endif

// Entry points of libnccl.so.2, loaded once per process (never unloaded: communicators may outlive any owner).
struct NcclApi {
    NcclResult (*CommInitAll)(NcclComm* comms, int ndev, const int* devlist) = nullptr;
    NcclResult (*AllReduce)(const void* sendbuff, void* recvbuff, size_t count, int datatype, int op, NcclComm comm,
                            CudaStream stream) = nullptr;
    NcclResult (*CommDestroy)(NcclComm comm) = nullptr;
    NcclResult (*CommAbort)(NcclComm comm) = nullptr;
    const char* (*GetErrorString)(NcclResult result) = nullptr;
    std::string error;  // why loading failed; empty when loaded

    bool ok() const { return error.empty(); }
    std::string ErrorString(NcclResult result) const {
        const char* s = GetErrorString(result);
        return s ? s : "NCCL error " + std::to_string(result);
    }
};

template <typename Fn>
bool LoadSymbol(void* lib, const char* name, Fn& fn, std::string& error) {
    fn = reinterpret_cast<Fn>(dlsym(lib, name));
    if (fn == nullptr && error.empty()) error = std::string("libnccl.so.2 lacks ") + name;
    return fn != nullptr;
}

const NcclApi& Nccl() {
    static const NcclApi api = [] {
        NcclApi a;
        void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr) {
            const char* why = dlerror();
            a.error = std::string("libnccl.so.2 not found") + (why ? std::string(": ") + why : "");
            return a;
        }
        LoadSymbol(lib, "ncclCommInitAll", a.CommInitAll, a.error);
        LoadSymbol(lib, "ncclAllReduce", a.AllReduce, a.error);
        LoadSymbol(lib, "ncclCommDestroy", a.CommDestroy, a.error);
        LoadSymbol(lib, "ncclCommAbort", a.CommAbort, a.error);
        LoadSymbol(lib, "ncclGetErrorString", a.GetErrorString, a.error);
        return a;
    }();
    return api;
}

// The communicators of one ncclCommInitAll, destroyed together when the last rank's Communicator goes.
class NcclGroup {
  public:
    explicit NcclGroup(std::vector<NcclComm> comms) : comms_(std::move(comms)), comm_mu_(comms_.size()) {}
    ~NcclGroup() {
        if (aborted_) return;  // ncclCommAbort freed them
        for (NcclComm comm : comms_) Nccl().CommDestroy(comm);
    }

    int size() const { return static_cast<int>(comms_.size()); }

    Status AllReduceSum(int rank, float* data, int64_t n, CudaStream stream) {
        UA_CHECK(n >= 0);
        // NCCL forbids concurrent calls on one communicator: Abort takes the same lock.
        std::lock_guard<std::mutex> lock(comm_mu_[rank]);
        if (aborted_) return Cancelled("tensor-parallel group aborted");
        if (n == 0) return Status::Ok();
        const NcclResult result =
            Nccl().AllReduce(data, data, static_cast<size_t>(n), kNcclFloat32, kNcclSum, comms_[rank], stream);
        if (result != kNcclSuccess) return Internal("ncclAllReduce: " + Nccl().ErrorString(result));
        return Status::Ok();
    }

    // ncclCommAbort ends kernels still waiting for a peer; it may be called from another thread than the rank's,
    // but not while that rank is inside an NCCL call (comm_mu_).
    void Abort() {
        std::lock_guard<std::mutex> abort_lock(abort_mu_);
        if (aborted_) return;
        std::vector<std::unique_lock<std::mutex>> locks;
        for (std::mutex& mu : comm_mu_) locks.emplace_back(mu);
        aborted_ = true;
        for (NcclComm comm : comms_) Nccl().CommAbort(comm);
    }

    bool aborted() {
        std::lock_guard<std::mutex> abort_lock(abort_mu_);
        return aborted_;
    }

  private:
    std::vector<NcclComm> comms_;
    std::vector<std::mutex> comm_mu_;  // one per rank: held around NCCL calls on comms_[rank]
    std::mutex abort_mu_;
    bool aborted_ = false;  // written under abort_mu_ and every comm_mu_; read under either
};

class NcclCommunicator : public Communicator {
  public:
    NcclCommunicator(std::shared_ptr<NcclGroup> group, int rank, CudaStream stream)
        : group_(std::move(group)), rank_(rank), stream_(stream) {}

    int rank() const override { return rank_; }
    int size() const override { return group_->size(); }
    Status AllReduceSum(float* data, int64_t n) override { return group_->AllReduceSum(rank_, data, n, stream_); }
    void Abort() override { group_->Abort(); }
    Status Reset() override {
        if (group_->aborted()) return FailedPrecondition("an aborted NCCL group cannot be reset: make a new one");
        return Status::Ok();
    }
    std::string Name() const override { return "nccl"; }

  private:
    std::shared_ptr<NcclGroup> group_;
    int rank_;
    CudaStream stream_;
};

}  // namespace

StatusOr<std::unique_ptr<CommunicatorGroup>> MakeNcclCommunicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams) {
    if (devices.empty()) return InvalidArgument("NCCL communicators need at least one device");
    if (streams.size() != devices.size()) {
        return InvalidArgument("NCCL communicators: " + std::to_string(devices.size()) + " devices but " +
                               std::to_string(streams.size()) + " streams");
    }
    std::set<int> distinct;
    for (int device : devices) {
        if (device < 0 || !distinct.insert(device).second) {
            return InvalidArgument("NCCL communicators: device ids must be distinct and >= 0 (got " +
                                   std::to_string(device) + " in the list or twice)");
        }
    }
    const NcclApi& nccl = Nccl();
    if (!nccl.ok()) return Unavailable(nccl.error);
    // Keeps an explicit choice in the environment (overwrite = 0); see the header for why multicast stays off.
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    std::vector<NcclComm> comms(devices.size(), nullptr);
    const NcclResult result = nccl.CommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data());
    if (result != kNcclSuccess) return Unavailable("ncclCommInitAll: " + nccl.ErrorString(result));
    auto group = std::make_shared<NcclGroup>(std::move(comms));
    std::vector<std::unique_ptr<Communicator>> out;
    out.reserve(devices.size());
    for (size_t r = 0; r < devices.size(); ++r) {
        out.push_back(std::make_unique<NcclCommunicator>(group, static_cast<int>(r), streams[r]));
    }
    return std::make_unique<CommunicatorGroup>(std::move(out));
}

}  // namespace uniattn

#endif  // UNIATTN_HAVE_CUDA
