// libFuzzer target: uniattn::SafetensorsFile::Open on a whole file (header length, JSON header, offsets),
// then reads every tensor it accepted, so an accepted view that points outside the file is caught by ASan.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "uniattn/safetensors.h"

namespace {

std::string TempPath() {
    const char* dir = std::getenv("TMPDIR");
    std::string path = std::string(dir && *dir ? dir : "/tmp") + "/uniattn_fuzz_st_XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) std::abort();
    ::close(fd);
    return path;
}

const std::string& Path() {
    static const std::string path = [] {
        std::string p = TempPath();
        std::atexit([] { ::unlink(Path().c_str()); });
        return p;
    }();
    return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string& path = Path();
    int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) std::abort();
    size_t done = 0;
    while (done < size) {
        ssize_t n = ::write(fd, data + done, size - done);
        if (n <= 0) std::abort();
        done += static_cast<size_t>(n);
    }
    ::close(fd);

    auto file = uniattn::SafetensorsFile::Open(path);
    if (!file.ok()) return 0;
    std::vector<float> out;
    for (const auto& [name, view] : (*file)->tensors()) {
        const int64_t numel = view.numel();
        // An accepted tensor's bytes are exactly numel * dtype size and lie inside the file.
        if (numel < 0 || view.nbytes != static_cast<size_t>(numel) * uniattn::DTypeBytes(view.dtype)) std::abort();
        if (view.nbytes > size) std::abort();
        (void)view.ShapeString();
        out.resize(static_cast<size_t>(numel));
        view.ToFloat(out.data());
    }
    return 0;
}
