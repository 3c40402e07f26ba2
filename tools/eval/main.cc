// uniattn-eval: perplexity of a model on a text file (issue 3 fills in the reference comparison).
#include <cstdio>

int main() {
    std::fprintf(stderr, "uniattn-eval: not implemented yet\n");
    return 1;
}
