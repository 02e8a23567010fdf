/* stream_ref.c: STREAM's method for the DRAM copy and triad reference rates, written for
 * llmem's memory-bench comparison (issue 6). Three arrays of N doubles, OpenMP across all
 * threads, first-touched in parallel; NTIMES timed passes of each kernel; the best pass
 * is reported, counting bytes as STREAM does (copy 16, triad 24 bytes per element) with
 * GB = 1e9 bytes. Build: gcc -O3 -march=native -fopenmp stream_ref.c -o stream_ref
 * With -DHUGE the arrays are 2 MiB aligned and advised to transparent huge pages before
 * the first touch (Linux), the page kind llmem's bench uses by default.
 * Prints one JSON object: {"copy_best_gb_s":…, "triad_best_gb_s":…, "copy_avg_gb_s":…, …}. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef HUGE
#include <sys/mman.h>
#define ALIGN __attribute__((aligned(2 << 20)))
#else
#define ALIGN
#endif

#ifndef N
#define N 80000000L
#endif
#ifndef NTIMES
#define NTIMES 10
#endif

static double a[N] ALIGN, b[N] ALIGN, c[N] ALIGN;

int main(void) {
    const double s = 3.0;
#ifdef HUGE
    madvise(a, sizeof a, MADV_HUGEPAGE);
    madvise(b, sizeof b, MADV_HUGEPAGE);
    madvise(c, sizeof c, MADV_HUGEPAGE);
#endif
#pragma omp parallel for
    for (long i = 0; i < N; i++) { a[i] = 1.0; b[i] = 2.0; c[i] = 0.0; }
    double tc[NTIMES], tt[NTIMES];
    for (int k = 0; k < NTIMES; k++) {
        double t0 = omp_get_wtime();
#pragma omp parallel for
        for (long i = 0; i < N; i++) c[i] = a[i];
        double t1 = omp_get_wtime();
#pragma omp parallel for
        for (long i = 0; i < N; i++) a[i] = b[i] + s * c[i];
        double t2 = omp_get_wtime();
        tc[k] = t1 - t0;
        tt[k] = t2 - t1;
    }
    /* The first pass is a warm-up, as in STREAM. */
    double bc = 1e30, bt = 1e30, sc = 0, st = 0;
    for (int k = 1; k < NTIMES; k++) {
        if (tc[k] < bc) bc = tc[k];
        if (tt[k] < bt) bt = tt[k];
        sc += tc[k];
        st += tt[k];
    }
    double cb = 16.0 * N / 1e9, tb = 24.0 * N / 1e9;
    printf("{\"threads\":%d,\"copy_best_gb_s\":%.2f,\"triad_best_gb_s\":%.2f,"
           "\"copy_avg_gb_s\":%.2f,\"triad_avg_gb_s\":%.2f,\"check\":%.1f}\n",
           omp_get_max_threads(), cb / bc, tb / bt, cb / (sc / (NTIMES - 1)),
           tb / (st / (NTIMES - 1)), a[N / 2]);
    return 0;
}
