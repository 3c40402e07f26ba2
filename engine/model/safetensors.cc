#include "uniattn/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "uniattn/json_io.h"
#include "util/file.h"

namespace uniattn {

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string TensorView::ShapeString() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

void TensorView::ToFloat(float* out) const {
    const int64_t n = numel();
    if (n == 0) return;  // an empty tensor: `out` may be null (an empty vector's data()), memcpy needs non-null
    switch (dtype) {
        case DType::kF32:
            std::memcpy(out, data, static_cast<size_t>(n) * 4);
            break;
        case DType::kF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, data + 2 * i, 2);
                out[i] = HalfToFloat(h);
            }
            break;
        case DType::kBF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, data + 2 * i, 2);
                out[i] = BF16ToFloat(h);
            }
            break;
        case DType::kF8E4M3:
            ConvertDType(data, dtype, out, DType::kF32, n);  // raw values: a weight_scale is the caller's
            break;
    }
}

Status TensorView::Read(uint64_t offset, size_t bytes, void* out) const {
    UA_CHECK(offset <= nbytes && bytes <= nbytes - offset);
    if (fd < 0) {
        if (bytes > 0) std::memcpy(out, data + offset, bytes);
        return Status::Ok();
    }
    auto* dst = static_cast<char*>(out);
    size_t done = 0;
    while (done < bytes) {
        const ssize_t got = ::pread(fd, dst + done, bytes - done, static_cast<off_t>(file_offset + offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            return DataLoss(file + ": tensor \"" + name + "\": read failed at byte " +
                            std::to_string(file_offset + offset + done) + ": " +
                            (got < 0 ? std::strerror(errno) : "end of file (truncated since it was opened?)"));
        }
        done += static_cast<size_t>(got);
    }
    return Status::Ok();
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFound(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ::close(fd);
        return DataLoss(path + ": cannot stat");
    }
    const size_t size = static_cast<size_t>(st.st_size);
    if (size < 8) {
        ::close(fd);
        return DataLoss(path + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header)");
    }
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        return DataLoss(path + ": mmap failed: " + std::strerror(err));
    }

    std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
    file->path_ = path;
    file->fd_ = fd;  // kept for TensorView::Read
    file->map_ = map;
    file->map_size_ = size;
    const auto* bytes = static_cast<const uint8_t*>(map);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len > size - 8 || header_len > (100u << 20)) {
        return DataLoss(path + ": truncated or corrupt safetensors file: header length " + std::to_string(header_len) +
                        " exceeds file size " + std::to_string(size));
    }
    std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_len);
    UA_ASSIGN_OR_RETURN(nlohmann::json root, ParseJsonFile(header, path + " (safetensors header)"));
    if (!root.is_object()) return DataLoss(path + ": safetensors header is not a JSON object");
    const uint8_t* data_start = bytes + 8 + header_len;
    const size_t data_size = size - 8 - header_len;
    for (const auto& [name, entry] : root.items()) {
        if (name == "__metadata__") continue;
        const std::string where = path + ": tensor \"" + name + "\"";
        if (!entry.is_object()) return DataLoss(where + ": header entry is not an object");
        const nlohmann::json* dt = JsonFind(entry, "dtype");
        const nlohmann::json* shape = JsonFind(entry, "shape");
        const nlohmann::json* offs = JsonFind(entry, "data_offsets");
        if (!dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() ||
            offs->size() != 2) {
            return DataLoss(where + ": header entry needs dtype, shape and data_offsets[2]");
        }
        TensorView v;
        v.name = name;
        v.file = path;
        auto dtype = ParseDType(dt->get<std::string>());
        if (!dtype.ok()) return Status(dtype.status().code(), where + ": " + dtype.status().message());
        v.dtype = *dtype;
        int64_t numel = 1;
        for (const nlohmann::json& dj : *shape) {
            const std::optional<int64_t> d = JsonInt64(dj);
            if (!d || *d < 0) return DataLoss(where + ": bad shape");
            v.shape.push_back(*d);
            if (*d > 0 && numel > (INT64_MAX / *d)) return DataLoss(where + ": shape overflows");
            numel *= *d;
        }
        const std::optional<int64_t> b = JsonInt64((*offs)[0]), e = JsonInt64((*offs)[1]);
        if (!b || !e || *b < 0 || *e < *b) return DataLoss(where + ": bad data_offsets");
        const auto begin = static_cast<uint64_t>(*b);
        const auto end = static_cast<uint64_t>(*e);
        if (end > data_size) {
            return DataLoss(where + ": data ends at byte " + std::to_string(end) + " but the file holds only " +
                            std::to_string(data_size) + " data bytes (truncated file?)");
        }
        // numel * bytes could wrap uint64 (shape [2^62] of F32 is 0 bytes); compare without multiplying.
        const auto dtype_bytes = static_cast<uint64_t>(DTypeBytes(v.dtype));
        if ((end - begin) % dtype_bytes != 0 || (end - begin) / dtype_bytes != static_cast<uint64_t>(numel)) {
            return DataLoss(where + ": " + std::to_string(end - begin) + " bytes do not match shape " +
                            v.ShapeString() + " of " + DTypeName(v.dtype));
        }
        v.data = data_start + begin;
        v.nbytes = end - begin;
        v.fd = fd;
        v.file_offset = 8 + header_len + begin;
        file->tensors_.emplace(name, std::move(v));
    }
    return file;
}

SafetensorsFile::~SafetensorsFile() {
    if (map_ != nullptr) ::munmap(map_, map_size_);
    if (fd_ >= 0) ::close(fd_);
}

StatusOr<TensorSet> TensorSet::OpenDir(const std::string& dir) {
    TensorSet set;
    const std::string index_path = dir + "/model.safetensors.index.json";
    const std::string single_path = dir + "/model.safetensors";
    std::vector<std::string> shard_files;
    if (FileExists(index_path)) {
        UA_ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
        UA_ASSIGN_OR_RETURN(nlohmann::json idx, ParseJsonFile(text, index_path));
        const nlohmann::json* wm = JsonFind(idx, "weight_map");
        if (wm == nullptr || !wm->is_object()) return DataLoss(index_path + ": missing \"weight_map\" object");
        std::set<std::string> seen;
        for (const auto& [name, file] : wm->items()) {
            if (!file.is_string()) return DataLoss(index_path + ": weight_map[\"" + name + "\"] is not a string");
            const std::string& f = file.get_ref<const std::string&>();
            if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
                return DataLoss(index_path + ": shard name \"" + f + "\" must be a plain file name");
            }
            if (seen.insert(f).second) shard_files.push_back(dir + "/" + f);
        }
    } else if (FileExists(single_path)) {
        shard_files.push_back(single_path);
    } else {
        return NotFound(dir + ": no model.safetensors or model.safetensors.index.json");
    }
    for (const std::string& path : shard_files) {
        UA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
        set.files_.push_back(std::move(f));
    }
    for (const auto& f : set.files_) {
        for (const auto& [name, view] : f->tensors()) {
            if (!set.index_.emplace(name, &view).second) {
                return DataLoss(f->path() + ": tensor \"" + name + "\" appears in more than one shard");
            }
        }
    }
    return set;
}

const TensorView* TensorSet::Find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> TensorSet::Names() const {
    std::vector<std::string> names;
    names.reserve(index_.size());
    for (const auto& [name, view] : index_) names.push_back(name);
    return names;
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
    std::vector<TensorToGenerate> specs;
    specs.reserve(tensors.size());
    for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
    return WriteSafetensors(
        path, specs,
        [&](size_t index, int64_t first, int64_t count, float* out) {
            std::memcpy(out, tensors[index].data + first, sizeof(float) * static_cast<size_t>(count));
        },
        metadata);
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToGenerate>& tensors, const TensorFill& fill,
                        const std::map<std::string, std::string>& metadata) {
    std::vector<size_t> sorted(tensors.size());
    for (size_t i = 0; i < sorted.size(); ++i) sorted[i] = i;
    std::sort(sorted.begin(), sorted.end(), [&](size_t a, size_t b) { return tensors[a].name < tensors[b].name; });
    auto numel = [](const TensorToGenerate& t) {
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        return n;
    };

    OrderedJson header = OrderedJson::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (size_t i : sorted) {
        const TensorToGenerate& t = tensors[i];
        const uint64_t nbytes = static_cast<uint64_t>(numel(t)) * DTypeBytes(t.dtype);
        OrderedJson& entry = header[t.name];
        entry["dtype"] = DTypeName(t.dtype);
        entry["shape"] = t.shape;
        entry["data_offsets"] = {static_cast<int64_t>(offset), static_cast<int64_t>(offset + nbytes)};
        offset += nbytes;
    }
    std::string h = DumpJson(header);
    while ((h.size() + 8) % 8 != 0) h.push_back(' ');  // align data to 8 bytes

    const std::string tmp = path + ".tmp";
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return NotFound(tmp + ": cannot open for writing");
    uint64_t len = h.size();
    char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
    out.write(len_bytes, 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    constexpr int64_t kPiece = 1 << 20;
    std::vector<float> values;
    std::vector<uint16_t> half;
    for (size_t i : sorted) {
        const TensorToGenerate& t = tensors[i];
        const int64_t n = numel(t);
        for (int64_t first = 0; first < n; first += kPiece) {
            const int64_t m = std::min(kPiece, n - first);
            values.resize(static_cast<size_t>(m));
            fill(i, first, m, values.data());
            switch (t.dtype) {
                case DType::kF32:
                    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(m * 4));
                    break;
                case DType::kF16:
                case DType::kBF16:
                    half.resize(static_cast<size_t>(m));
                    for (int64_t j = 0; j < m; ++j) {
                        half[j] = t.dtype == DType::kF16 ? FloatToHalf(values[j]) : FloatToBF16(values[j]);
                    }
                    out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(m * 2));
                    break;
                case DType::kF8E4M3:
                    half.resize(static_cast<size_t>(m));  // m bytes fit in 2m
                    ConvertDType(values.data(), DType::kF32, half.data(), DType::kF8E4M3, m);
                    out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(m));
                    break;
            }
        }
    }
    out.close();
    if (!out) return DataLoss(tmp + ": write failed");
    if (std::rename(tmp.c_str(), path.c_str()) != 0) return DataLoss(path + ": rename failed");
    return Status::Ok();
}

}  // namespace uniattn
