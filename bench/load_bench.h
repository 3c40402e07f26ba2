// `uniattn-bench load`: checkpoint load speed (safetensors -> backend weights), and seeded random checkpoints
// of real shapes to measure it on. See load_bench.cc for the command line.
#pragma once

namespace uniattn::bench {

// argv[0] is "load". Returns the process exit code.
int LoadBenchMain(int argc, char** argv);

}  // namespace uniattn::bench
