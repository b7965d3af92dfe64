/* EWC and L2-SP regularisers. The full implementation lands with the transfer-learning
 * issue; until then no regulariser is ever active. */
#include "train.h"  /* includes ewc.h */

struct tl_ewc {
    int unused;
};

void tl_ewc_free(struct tl_ewc *e)
{
    tl_free(e);
}

int tl_ewc_drop_layers(tlearn_model *m, int keep)
{
    (void)m;
    (void)keep;
    return TLEARN_OK;
}

int tl_ewc_active(const tlearn_model *m)
{
    return m->ewc != NULL;
}

double tl_ewc_penalty(const tlearn_model *m)
{
    (void)m;
    return 0.0;
}
