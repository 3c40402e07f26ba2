#include "kv/kv_cache.h"

#include <algorithm>
#include <atomic>

namespace uniattn {

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend* backend, const ModelConfig& config, int block_size,
                                                   int64_t num_blocks) {
    return Create(backend, config, block_size, num_blocks, backend->KvDType(), nullptr);  // fp32 on the CPU oracle
}

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend* backend, const ModelConfig& config, int block_size,
                                                   int64_t num_blocks, DType dtype, const KvScales* scales) {
    if (block_size <= 0) return InvalidArgument("block_size must be positive");
    if (num_blocks <= 0) return InvalidArgument("the KV cache needs at least one block");
    if (!backend->SupportsKvDType(dtype)) {
        return InvalidArgument("the " + backend->Name() + " backend cannot hold a KV cache in " + DTypeName(dtype));
    }
    const bool fp8 = dtype == DType::kF8E4M3;
    if (fp8) {
        if (scales == nullptr) return InvalidArgument("an F8_E4M3 KV cache needs per-head K and V scales");
        UA_RETURN_IF_ERROR(CheckKvScales(config, *scales));
    }
    std::unique_ptr<KvCache> kv(new KvCache());
    static std::atomic<uint64_t> next_id{1};
    kv->id_ = next_id++;
    kv->block_size_ = block_size;
    kv->num_blocks_ = num_blocks;
    kv->dtype_ = dtype;
    kv->bytes_per_block_ = config.KvBytesPerToken(DTypeBytes(kv->dtype_)) * block_size;
    const int64_t plane_bytes =
        num_blocks * block_size * static_cast<int64_t>(config.num_kv_heads) * config.head_dim * DTypeBytes(kv->dtype_);
    // fp8: every plane's scales in one buffer, [num_layers, 2 (K, V), num_kv_heads] (reuse layers' K part unused).
    float* scale_base = nullptr;
    const int64_t heads = config.num_kv_heads;
    if (fp8) {
        kv->scales_ = *scales;
        std::vector<float> host(static_cast<size_t>(config.num_layers) * 2 * heads, 1.0f);
        for (int l = 0; l < config.num_layers; ++l) {
            std::copy(scales->k[l].begin(), scales->k[l].end(), host.begin() + (2 * l) * heads);
            std::copy(scales->v[l].begin(), scales->v[l].end(), host.begin() + (2 * l + 1) * heads);
        }
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(sizeof(float) * host.size()));
        backend->CopyToDevice(buf->data(), host.data(), sizeof(float) * host.size());
        scale_base = static_cast<float*>(buf->data());
        kv->buffers_.push_back(std::move(buf));
    }
    auto make_plane = [&](KvPlane& plane, int64_t scale_offset) -> Status {
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(static_cast<size_t>(plane_bytes)));
        backend->Fill(buf->data(), 0, static_cast<size_t>(plane_bytes));
        plane = KvPlane{buf->data(), kv->dtype_, num_blocks, block_size, config.num_kv_heads, config.head_dim};
        if (fp8) plane.scale = scale_base + scale_offset;
        kv->buffers_.push_back(std::move(buf));
        return Status::Ok();
    };
    kv->k_planes_.resize(config.num_layers);
    kv->v_planes_.resize(config.num_layers);
    for (int l = 0; l < config.num_layers; ++l) {
        if (config.HasKeys(l)) UA_RETURN_IF_ERROR(make_plane(kv->k_planes_[l], (2 * l) * heads));
        UA_RETURN_IF_ERROR(make_plane(kv->v_planes_[l], (2 * l + 1) * heads));
    }
    return kv;
}

void KvCache::CopyBlocks(Backend* backend, const std::vector<std::pair<int32_t, int32_t>>& copies) const {
    // Each plane is [num_blocks, block_size, num_kv_heads, head_dim]: a block is one contiguous run.
    for (const auto& [src, dst] : copies) {
        for (size_t l = 0; l < v_planes_.size(); ++l) {
            for (const KvPlane* plane : {&k_planes_[l], &v_planes_[l]}) {
                if (plane->base == nullptr) continue;  // a reuse layer's K
                const size_t bytes = static_cast<size_t>(plane->block_size) * plane->num_kv_heads * plane->head_dim *
                                     DTypeBytes(plane->dtype);
                char* base = static_cast<char*>(plane->base);
                backend->CopyOnDevice(base + static_cast<int64_t>(dst) * bytes,
                                      base + static_cast<int64_t>(src) * bytes, bytes);
            }
        }
    }
}

}  // namespace uniattn
