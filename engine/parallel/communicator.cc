#include "parallel/communicator.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

namespace uniattn {
namespace {

// State shared by the host communicators of one group.
class HostGroup {
  public:
    explicit HostGroup(int size) : size_(size), data_(size), counts_(size) {}

    int size() const { return size_; }

    // One reduction (Communicator::AllReduceSum) by `rank`.
    Status AllReduceSum(int rank, float* data, int64_t n) {
        UA_CHECK(n >= 0);
        UA_CHECK(data != nullptr || n == 0);
        data_[rank] = data;
        counts_[rank] = n;
        // Until every rank has arrived one may never come (it failed): this wait gives way to Abort. Past it every
        // rank is here, so the second wait always ends and needs no way out; a reduction is all or nothing.
        if (!Arrive(/*abortable=*/true)) return Cancelled("tensor-parallel group aborted");
        bool same_n = true;
        for (int r = 0; r < size_; ++r) same_n = same_n && counts_[r] == n;
        if (same_n) SumSlice(rank, n);
        // data_ and counts_ are not rewritten (by a rank's next call) before every rank is done reading them.
        Arrive(/*abortable=*/false);
        if (!same_n) return InvalidArgument("AllReduceSum: ranks disagree on the element count");
        return Status::Ok();
    }

    void Abort() {
        std::lock_guard<std::mutex> lock(mu_);
        aborted_ = true;
        cv_.notify_all();
    }

    Status Reset() {
        std::lock_guard<std::mutex> lock(mu_);
        aborted_ = false;
        num_arrived_ = 0;  // ranks that had arrived when the group was aborted have left
        return Status::Ok();
    }

  private:
    // Rank `rank`'s share: elements [rank·n/size, (rank+1)·n/size), summed in rank order into rank 0's buffer
    // ((d0 + d1) + d2 ...: one add per element per rank, so the bits do not depend on who computes them), then
    // copied to the others. Slices are disjoint, so no two threads touch the same element.
    void SumSlice(int rank, int64_t n) {
        const int64_t begin = n * rank / size_;
        const int64_t end = n * (rank + 1) / size_;
        if (begin == end) return;
        float* acc = data_[0] + begin;
        const int64_t len = end - begin;
        for (int r = 1; r < size_; ++r) {
            const float* src = data_[r] + begin;
            for (int64_t i = 0; i < len; ++i) acc[i] += src[i];
        }
        for (int r = 1; r < size_; ++r) std::memcpy(data_[r] + begin, acc, static_cast<size_t>(len) * sizeof(float));
    }

    // A barrier over all ranks. Abortable: false (without waiting for the others) once the group is aborted,
    // unless every rank arrived before that.
    bool Arrive(bool abortable) {
        std::unique_lock<std::mutex> lock(mu_);
        if (abortable && aborted_) return false;
        const uint64_t generation = generation_;
        if (++num_arrived_ == size_) {
            num_arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return true;
        }
        cv_.wait(lock, [&] { return generation_ != generation || (abortable && aborted_); });
        return generation_ != generation;
    }

    const int size_;
    // Written by their rank before the first barrier of a call, read by every rank between the two.
    std::vector<float*> data_;
    std::vector<int64_t> counts_;
    std::mutex mu_;
    std::condition_variable cv_;
    int num_arrived_ = 0;      // guarded by mu_
    uint64_t generation_ = 0;  // guarded by mu_: bumped each time every rank has arrived
    bool aborted_ = false;     // guarded by mu_
};

class HostCommunicator : public Communicator {
  public:
    HostCommunicator(std::shared_ptr<HostGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

    int rank() const override { return rank_; }
    int size() const override { return group_->size(); }
    Status AllReduceSum(float* data, int64_t n) override { return group_->AllReduceSum(rank_, data, n); }
    void Abort() override { group_->Abort(); }
    Status Reset() override { return group_->Reset(); }
    std::string Name() const override { return "host"; }

  private:
    std::shared_ptr<HostGroup> group_;
    int rank_;
};

}  // namespace

std::unique_ptr<CommunicatorGroup> MakeHostCommunicators(int size) {
    UA_CHECK(size >= 1);
    auto group = std::make_shared<HostGroup>(size);
    std::vector<std::unique_ptr<Communicator>> comms;
    comms.reserve(size);
    for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<HostCommunicator>(group, r));
    return std::make_unique<CommunicatorGroup>(std::move(comms));
}

}  // namespace uniattn
