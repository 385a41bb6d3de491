// gloo_allreduce: the Gloo baseline of `make compare` (Benchmarks/Baselines/compare.py runs it).
//
// One process per rank; compare.py starts all N of them:
//   gloo_allreduce --algo ring|chunked|hd --rank R --size N --store DIR -b 4K -e 64M -f 4 -n 20 -w 5
// (rank and size may also come from RANK and WORLD_SIZE). A float32 sum allreduce over Gloo's TCP
// transport on 127.0.0.1; the ranks meet through a gloo::rendezvous::FileStore in DIR.
//   ring     gloo::allreduce() with AllreduceOptions' RING algorithm (the API PyTorch uses)
//   chunked  gloo::AllreduceRingChunked (old-style algorithm object)
//   hd       gloo::AllreduceHalvingDoubling (old-style algorithm object)
// Every size ("row") gets a context and connections of its own, under a store prefix of its own: an
// old-style algorithm object can shrink the send buffers of the sockets it uses, and a later row on the
// same connections would inherit them.
// Per row: one checked call (inputs distinct per rank and index, every element compared with the exact
// sum; a wrong value exits 1), then -w warm-up calls, then -n timed calls. Each rank publishes its own
// average in the store; rank 0 takes the slowest and prints one JSON line:
//   {"system":"gloo-ring","ranks":2,"bytes":4096,"iters":20,"time_us":...,"busbw":...}
// busbw = bytes / time * 2(n-1)/n in GB/s (1e9), nccl-tests' bus bandwidth.

#include <gloo/allreduce.h>
#include <gloo/allreduce_halving_doubling.h>
#include <gloo/allreduce_ring_chunked.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "gloo_allreduce: %s\n", message.c_str());
  std::exit(1);
}

// "4K" -> 4096, "64M" -> 67108864 (powers of 1024, as concord-bench).
size_t parseBytes(const char* text) {
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  switch (*end) {
    case 'K': case 'k': value <<= 10; end++; break;
    case 'M': case 'm': value <<= 20; end++; break;
    case 'G': case 'g': value <<= 30; end++; break;
  }
  if (end == text || *end != '\0') die(std::string("bad size: ") + text);
  return value;
}

struct Options {
  std::string algo = "ring";
  int rank = -1;
  int size = -1;
  std::string store;
  size_t minBytes = 4096, maxBytes = 64 << 20, factor = 4;
  int iters = 20, warmup = 5;
};

Options parse(int argc, char** argv) {
  Options o;
  if (const char* r = std::getenv("RANK")) o.rank = std::atoi(r);
  if (const char* n = std::getenv("WORLD_SIZE")) o.size = std::atoi(n);
  for (int i = 1; i < argc; i++) {
    std::string flag = argv[i];
    if (i + 1 >= argc) die("missing value after " + flag);
    const char* value = argv[++i];
    if (flag == "--algo") o.algo = value;
    else if (flag == "--rank") o.rank = std::atoi(value);
    else if (flag == "--size") o.size = std::atoi(value);
    else if (flag == "--store") o.store = value;
    else if (flag == "-b") o.minBytes = parseBytes(value);
    else if (flag == "-e") o.maxBytes = parseBytes(value);
    else if (flag == "-f") o.factor = parseBytes(value);
    else if (flag == "-n") o.iters = std::atoi(value);
    else if (flag == "-w") o.warmup = std::atoi(value);
    else die("unknown flag " + flag);
  }
  if (o.algo != "ring" && o.algo != "chunked" && o.algo != "hd") die("--algo is ring, chunked or hd");
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) die("need --rank R --size N with 0 <= R < N");
  if (o.store.empty()) die("need --store DIR (a directory shared by all ranks)");
  if (o.factor < 2 || o.iters < 1 || o.warmup < 0 || o.minBytes < 4) die("bad -f, -n, -w or -b");
  return o;
}

// Returns a function that runs one allreduce of `count` floats at `data` in place.
std::function<void()> makeAllreduce(const Options& o, const std::shared_ptr<gloo::Context>& context,
                                    float* data, size_t count) {
  if (o.algo == "chunked") {
    auto algorithm = std::make_shared<gloo::AllreduceRingChunked<float>>(
        context, std::vector<float*>{data}, static_cast<int>(count));
    return [algorithm] { algorithm->run(); };
  }
  if (o.algo == "hd") {
    auto algorithm = std::make_shared<gloo::AllreduceHalvingDoubling<float>>(
        context, std::vector<float*>{data}, static_cast<int>(count));
    return [algorithm] { algorithm->run(); };
  }
  return [context, data, count] {
    gloo::AllreduceOptions options(context);
    options.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
    options.setOutput(data, count);
    void (*sum)(void*, const void*, const void*, size_t) = &gloo::sum<float>;
    options.setReduceFunction(sum);
    gloo::allreduce(options);
  };
}

// Element i of rank r is r + 1 + 8 * (i % 1000): distinct per rank and index, sums exact in float32.
float input(int rank, size_t i) { return float(rank + 1 + 8 * (i % 1000)); }

void runRow(const Options& o, gloo::rendezvous::Store& root, std::shared_ptr<gloo::transport::Device>& device,
            size_t bytes) {
  const std::string name = "gloo-" + o.algo;
  gloo::rendezvous::PrefixStore store(name + "-" + std::to_string(bytes), root);
  auto context = std::make_shared<gloo::rendezvous::Context>(o.rank, o.size);
  context->setTimeout(std::chrono::seconds(60));
  context->connectFullMesh(store, device);

  const size_t count = bytes / sizeof(float);
  std::vector<float> data(count);
  auto allreduce = makeAllreduce(o, context, data.data(), count);

  for (size_t i = 0; i < count; i++) data[i] = input(o.rank, i);
  allreduce();
  for (size_t i = 0; i < count; i++) {
    float expected = 0;
    for (int r = 0; r < o.size; r++) expected += input(r, i);
    if (data[i] != expected) {
      die(name + " rank " + std::to_string(o.rank) + ": " + std::to_string(bytes) + " B: element " +
          std::to_string(i) + " is " + std::to_string(data[i]) + ", expected " + std::to_string(expected));
    }
  }

  // Zeros stay zeros, so repeated in-place sums neither overflow nor turn denormal.
  std::fill(data.begin(), data.end(), 0.0f);
  for (int i = 0; i < o.warmup; i++) allreduce();  // the last warm-up call also lines the ranks up
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; i++) allreduce();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double mine = seconds / o.iters * 1e6;

  store.set("time-" + std::to_string(o.rank), std::vector<char>((char*)&mine, (char*)&mine + sizeof mine));
  if (o.rank == 0) {
    double slowest = 0;
    for (int r = 0; r < o.size; r++) {
      std::string key = "time-" + std::to_string(r);
      store.wait({key}, std::chrono::seconds(60));
      std::vector<char> value = store.get(key);
      double t;
      std::memcpy(&t, value.data(), sizeof t);
      slowest = std::max(slowest, t);
    }
    double busbw = bytes / (slowest * 1e-6) * 2.0 * (o.size - 1) / o.size / 1e9;
    std::printf("{\"system\":\"%s\",\"ranks\":%d,\"bytes\":%zu,\"iters\":%d,\"time_us\":%.3f,\"busbw\":%.6f}\n",
                name.c_str(), o.size, bytes, o.iters, slowest, busbw);
    std::fflush(stdout);
  }
  // Rank 0 has read every time; nobody closes its connections while a peer still needs them.
  store.set("done-" + std::to_string(o.rank), {1});
  for (int r = 0; r < o.size; r++) store.wait({"done-" + std::to_string(r)}, std::chrono::seconds(60));
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto device = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(o.store);
  try {
    for (size_t bytes = o.minBytes; bytes <= o.maxBytes; bytes *= o.factor) runRow(o, store, device, bytes);
  } catch (const std::exception& error) {
    die(std::string("rank ") + std::to_string(o.rank) + ": " + error.what());
  }
  return 0;
}
