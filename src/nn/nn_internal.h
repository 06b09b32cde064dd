/* nn_internal.h: helpers shared by the files of src/nn/ only. */
#ifndef TAME_NN_INTERNAL_H
#define TAME_NN_INTERNAL_H

#include "tame/nn.h"

/* A network of the given shape with every block zeroed and no mask. */
int nn_mlp_alloc(const int *dims, int n_dims, struct nn_mlp **ret_mlp);

/* A version number no network of this process has had (struct nn_mlp). */
uint64_t nn_next_version(void);

#endif
