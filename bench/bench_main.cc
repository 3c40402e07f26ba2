// uniattn-bench: engine-level benchmark (filled in with the CUDA backend issue).
#include <cstdio>

int main() {
    std::fprintf(stderr, "uniattn-bench: not implemented yet\n");
    return 1;
}
