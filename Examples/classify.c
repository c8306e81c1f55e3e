/*
 * Runs a network compiled by mnc on a raw float32 input tensor and prints the top class.
 *
 * Build with -DMODEL_HEADER='"NAME.h"' -DMODEL=NAME -DMODEL_UPPER=NAME_IN_CAPITALS and link
 * libNAME.a (see the Makefile). Usage: classify INPUT.f32
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include MODEL_HEADER

#define JOIN(a, b) a##b
#define NAME(prefix, suffix) JOIN(prefix, suffix)
#define RUN NAME(MODEL, _run)
#define WEIGHTS NAME(MODEL, _weights)
#define INPUT_SIZE NAME(MODEL_UPPER, _INPUT_SIZE)
#define OUTPUT_SIZE NAME(MODEL_UPPER, _OUTPUT_SIZE)
#define ARENA_SIZE NAME(MODEL_UPPER, _ARENA_SIZE)
#define ARENA_ALIGNMENT NAME(MODEL_UPPER, _ARENA_ALIGNMENT)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s INPUT.f32\n", argv[0]);
        return 2;
    }

    /* The input: INPUT_SIZE float32 values in the layout the header documents. */
    static float input[INPUT_SIZE];
    static float logits[OUTPUT_SIZE];
    FILE *file = fopen(argv[1], "rb");
    if (!file) {
        perror(argv[1]);
        return 1;
    }
    size_t count = fread(input, sizeof(float), INPUT_SIZE, file);
    int extra = fgetc(file);
    fclose(file);
    if (count != INPUT_SIZE || extra != EOF) {
        fprintf(stderr, "%s: expected exactly %d float32 values\n", argv[1], INPUT_SIZE);
        return 1;
    }

    /* The arena: ARENA_SIZE bytes, aligned as the header specifies, and reusable across runs. */
    void *arena = NULL;
    if (posix_memalign(&arena, ARENA_ALIGNMENT, ARENA_SIZE > 0 ? ARENA_SIZE : ARENA_ALIGNMENT) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    int status = RUN(WEIGHTS, input, logits, arena);
    free(arena);
    if (status != 0) {
        fprintf(stderr, "the network returned error %d\n", status);
        return 1;
    }

    int best = 0;
    for (int i = 1; i < OUTPUT_SIZE; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    printf("class %d logit %.6f\n", best, logits[best]);
    return 0;
}
