// timeline.c: a CUPTI injection library that writes every kernel's start and
// end (GPU timestamps, ns) to $TIMELINE_OUT as CSV: start,end,graph,stream,
// correlation,gridX,blockX,name. The CUDA driver loads it at its first call
// when CUDA_INJECTION64_PATH names it (timeline.sh builds and runs it; Go's
// exit skips atexit, so records are flushed every 20 ms instead). Kernels in
// CUDA graphs are recorded too; tracing slows a decode step by ~10 %.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef KREC
#define KREC CUpti_ActivityKernel10 // the kernel record of CUDA 12–13 (timeline.sh picks the newest the toolkit has)
#endif

static FILE* out;

static void CUPTIAPI requested(uint8_t** buf, size_t* size, size_t* maxRecords) {
  *size = 8 << 20;
  *buf = (uint8_t*)aligned_alloc(8, *size);
  *maxRecords = 0;
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t* buf, size_t size, size_t valid) {
  CUpti_Activity* r = NULL;
  while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const KREC* k = (const KREC*)r;
    fprintf(out, "%llu,%llu,%u,%u,%u,%d,%d,%s\n", (unsigned long long)k->start, (unsigned long long)k->end, k->graphId,
            k->streamId, k->correlationId, k->gridX, k->blockX, k->name);
  }
  fflush(out);
  free(buf);
}

int InitializeInjection(void) {
  const char* path = getenv("TIMELINE_OUT");
  out = fopen(path ? path : "timeline.csv", "w");
  if (!out) return 0;
  cuptiActivityRegisterCallbacks(requested, completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityFlushPeriod(20);
  return 1;
}
