#include "kv/kv_cache.h"

#include <atomic>

namespace uniattn {

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend* backend, const ModelConfig& config, int block_size,
                                                   int64_t num_blocks) {
    if (block_size <= 0) return InvalidArgument("block_size must be positive");
    if (num_blocks <= 0) return InvalidArgument("the KV cache needs at least one block");
    std::unique_ptr<KvCache> kv(new KvCache());
    static std::atomic<uint64_t> next_id{1};
    kv->id_ = next_id++;
    kv->block_size_ = block_size;
    kv->num_blocks_ = num_blocks;
    kv->dtype_ = backend->KvDType();  // fp32 on the CPU oracle
    kv->bytes_per_block_ = config.KvBytesPerToken(DTypeBytes(kv->dtype_)) * block_size;
    const int64_t plane_bytes =
        num_blocks * block_size * static_cast<int64_t>(config.num_kv_heads) * config.head_dim * DTypeBytes(kv->dtype_);
    auto make_plane = [&](KvPlane& plane) -> Status {
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(static_cast<size_t>(plane_bytes)));
        backend->Fill(buf->data(), 0, static_cast<size_t>(plane_bytes));
        plane = KvPlane{buf->data(), kv->dtype_, num_blocks, block_size, config.num_kv_heads, config.head_dim};
        kv->buffers_.push_back(std::move(buf));
        return Status::Ok();
    };
    kv->k_planes_.resize(config.num_layers);
    kv->v_planes_.resize(config.num_layers);
    for (int l = 0; l < config.num_layers; ++l) {
        if (config.HasKeys(l)) UA_RETURN_IF_ERROR(make_plane(kv->k_planes_[l]));
        UA_RETURN_IF_ERROR(make_plane(kv->v_planes_[l]));
    }
    return kv;
}

}  // namespace uniattn
