/* mpi_allreduce: the Open MPI baseline of `make compare` (Benchmarks/Baselines/compare.py runs it).
 *
 *   mpirun -np N [--mca btl tcp,self | vader,self] mpi_allreduce --name mpi-tcp -b 4K -e 64M -f 4 -n 20 -w 5
 *
 * A float32 MPI_SUM MPI_Allreduce, in place, over a sweep of sizes. Per size ("row"): one checked call
 * (inputs distinct per rank and index, every element compared with the exact sum; a wrong value aborts
 * with exit 1), then -w warm-up calls, a barrier, and -n timed calls. The row's time is the slowest
 * rank's average (MPI_Reduce with MPI_MAX to rank 0), and rank 0 prints one JSON line:
 *   {"system":"mpi-tcp","ranks":2,"bytes":4096,"iters":20,"time_us":...,"busbw":...}
 * busbw = bytes / time * 2(n-1)/n in GB/s (1e9), nccl-tests' bus bandwidth.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *message, const char *detail) {
    fprintf(stderr, "mpi_allreduce: %s%s\n", message, detail);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

/* "4K" -> 4096, "64M" -> 67108864 (powers of 1024, as concord-bench). */
static size_t parse_bytes(const char *text) {
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    switch (*end) {
        case 'K': case 'k': value <<= 10; end++; break;
        case 'M': case 'm': value <<= 20; end++; break;
        case 'G': case 'g': value <<= 30; end++; break;
    }
    if (end == text || *end != '\0') die("bad size: ", text);
    return (size_t)value;
}

/* Element i of rank r is r + 1 + 8 * (i % 1000): distinct per rank and index, sums exact in float32. */
static float input(int rank, size_t i) { return (float)(rank + 1 + 8 * (i % 1000)); }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    const char *name = "mpi";
    size_t min_bytes = 4096, max_bytes = 64 << 20, factor = 4;
    int iters = 20, warmup = 5;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) die("missing value after ", argv[i]);
        const char *flag = argv[i], *value = argv[++i];
        if (!strcmp(flag, "--name")) name = value;
        else if (!strcmp(flag, "-b")) min_bytes = parse_bytes(value);
        else if (!strcmp(flag, "-e")) max_bytes = parse_bytes(value);
        else if (!strcmp(flag, "-f")) factor = parse_bytes(value);
        else if (!strcmp(flag, "-n")) iters = atoi(value);
        else if (!strcmp(flag, "-w")) warmup = atoi(value);
        else die("unknown flag ", flag);
    }
    if (factor < 2 || iters < 1 || warmup < 0 || min_bytes < 4) die("bad -f, -n, -w or -b", "");

    float *data = malloc(max_bytes);
    if (!data) die("out of memory", "");
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= factor) {
        const size_t count = bytes / sizeof(float);
        for (size_t i = 0; i < count; i++) data[i] = input(rank, i);
        MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (size_t i = 0; i < count; i++) {
            float expected = 0;
            for (int r = 0; r < size; r++) expected += input(r, i);
            if (data[i] != expected) {
                fprintf(stderr, "mpi_allreduce: %s rank %d: %zu B: element %zu is %g, expected %g\n", name,
                        rank, bytes, i, data[i], expected);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }

        /* Zeros stay zeros, so repeated in-place sums neither overflow nor turn denormal. */
        memset(data, 0, bytes);
        for (int i = 0; i < warmup; i++)
            MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (int i = 0; i < iters; i++)
            MPI_Allreduce(MPI_IN_PLACE, data, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double mine = (MPI_Wtime() - start) / iters * 1e6, slowest = 0;
        MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            double busbw = bytes / (slowest * 1e-6) * 2.0 * (size - 1) / size / 1e9;
            printf("{\"system\":\"%s\",\"ranks\":%d,\"bytes\":%zu,\"iters\":%d,\"time_us\":%.3f,\"busbw\":%.6f}\n",
                   name, size, bytes, iters, slowest, busbw);
            fflush(stdout);
        }
    }
    free(data);
    MPI_Finalize();
    return 0;
}
