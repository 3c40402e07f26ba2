// safetensors files, memory-mapped: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the raw little-endian data. Sharded checkpoints add
// model.safetensors.index.json with a "weight_map" from tensor name to shard file.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "uniattn/dtype.h"
#include "uniattn/status.h"

namespace uniattn {

// A view of one tensor inside a mapped file.
struct TensorView {
    std::string name;
    std::string file;  // the file it lives in, for messages
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    int fd = -1;               // the file, open while its SafetensorsFile lives; -1: Read copies from `data`
    uint64_t file_offset = 0;  // where `data` starts in the file

    int64_t numel() const;
    std::string ShapeString() const;
    // Converts to fp32 into out[numel()].
    void ToFloat(float* out) const;
    // Copies bytes [offset, offset + bytes) of the data into out[bytes] (offset + bytes <= nbytes) with pread:
    // from a warm page cache several times faster than faulting the mapping in page by page, and safe to call
    // from several threads at once. An I/O error (a file truncated since it was opened) is kDataLoss.
    Status Read(uint64_t offset, size_t bytes, void* out) const;
};

// One mapped file. Movable, not copyable; unmaps on destruction.
class SafetensorsFile {
  public:
    static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
    ~SafetensorsFile();
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::map<std::string, TensorView>& tensors() const { return tensors_; }
    const std::string& path() const { return path_; }

  private:
    SafetensorsFile() = default;
    std::string path_;
    int fd_ = -1;
    void* map_ = nullptr;
    size_t map_size_ = 0;
    std::map<std::string, TensorView> tensors_;
};

// All tensors of a model directory: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class TensorSet {
  public:
    static StatusOr<TensorSet> OpenDir(const std::string& dir);
    // nullptr when absent.
    const TensorView* Find(const std::string& name) const;
    std::vector<std::string> Names() const;
    // The files, in the index's order (one for model.safetensors).
    const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

  private:
    std::vector<std::shared_ptr<SafetensorsFile>> files_;
    std::map<std::string, const TensorView*> index_;
};

// A tensor to write: fp32 data converted to `dtype` on write.
struct TensorToWrite {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    const float* data = nullptr;
};

// Writes one safetensors file (tensors sorted by name, as the reference writer does).
Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// A tensor whose values a callback produces piece by piece (TensorFill), for files larger than memory.
struct TensorToGenerate {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
};
// Writes values [first, first + count) of tensors[index] as fp32 into out[count] (converted to its dtype on
// write). count is at most 1 Mi values.
using TensorFill = std::function<void(size_t index, int64_t first, int64_t count, float* out)>;

// As above, with the values from `fill`: the same bytes as WriteSafetensors of the same values.
Status WriteSafetensors(const std::string& path, const std::vector<TensorToGenerate>& tensors, const TensorFill& fill,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace uniattn
