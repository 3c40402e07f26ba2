// The paged KV cache's memory: one K plane per anchor/normal layer, one V plane per layer, each
//   [num_blocks, block_size, num_kv_heads, head_dim]
// Reuse layers own no K plane (docs/uniattn.md §3), so a block costs block_size · KvBytesPerToken(), and the
// same byte budget holds more blocks for a UniAttn model (BlockManager::NumBlocksForBytes counts them). An fp8
// e4m3 cache takes 1 byte an element (a quarter of fp32) plus per-layer, per-head scales (kv/kv_scales.h).
// Which sequence owns which block is the block manager's business (kv/block_manager.h); this class never
// interprets ownership.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_scales.h"
#include "uniattn/model_config.h"

namespace uniattn {

class KvCache {
  public:
    // Allocates num_blocks blocks on the backend, in backend->KvDType().
    static StatusOr<std::unique_ptr<KvCache>> Create(Backend* backend, const ModelConfig& config, int block_size,
                                                     int64_t num_blocks);
    // In `dtype`: InvalidArgument naming the backend and the dtype unless backend->SupportsKvDType(dtype).
    // kF8E4M3 needs `scales` (CheckKvScales: InvalidArgument when missing or malformed), copied to backend
    // memory and set in every plane's KvPlane::scale; other dtypes ignore `scales`.
    static StatusOr<std::unique_ptr<KvCache>> Create(Backend* backend, const ModelConfig& config, int block_size,
                                                     int64_t num_blocks, DType dtype, const KvScales* scales);

    int block_size() const { return block_size_; }
    int64_t num_blocks() const { return num_blocks_; }
    int64_t bytes_per_block() const { return bytes_per_block_; }
    int64_t total_bytes() const { return bytes_per_block_ * num_blocks_; }
    DType dtype() const { return dtype_; }
    // The fp8 scales the planes use; empty unless dtype() is kF8E4M3.
    const KvScales& scales() const { return scales_; }
    // Unique per cache in this process (never reused), for keying work recorded against its planes.
    uint64_t id() const { return id_; }

    bool HasK(int layer) const { return k_planes_[layer].base != nullptr; }
    const KvPlane& K(int layer) const { return k_planes_[layer]; }  // precondition: HasK(layer)
    const KvPlane& V(int layer) const { return v_planes_[layer]; }

    // Copies whole blocks (src, dst) in every plane on `backend` (the one the cache was created on): the prefix
    // cache's copy-on-write of a shared partial block, before the pass that writes into it.
    void CopyBlocks(Backend* backend, const std::vector<std::pair<int32_t, int32_t>>& copies) const;

  private:
    KvCache() = default;
    int block_size_ = 0;
    int64_t num_blocks_ = 0;
    int64_t bytes_per_block_ = 0;
    DType dtype_ = DType::kF32;
    KvScales scales_;
    uint64_t id_ = 0;
    std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
    std::vector<KvPlane> k_planes_;  // base == nullptr for reuse layers
    std::vector<KvPlane> v_planes_;
};

}  // namespace uniattn
