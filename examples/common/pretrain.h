/* Shared by the recipe examples: a stand-in for a real pretrained model. */
#ifndef EXAMPLES_PRETRAIN_H
#define EXAMPLES_PRETRAIN_H

#include <stdio.h>
#include <stdlib.h>

#include <tlearn/tlearn.h>

#include "check.h"
#include "fmnist.h"

/* A small CNN (conv1 relu1 pool1 conv2 relu2 pool2 fc1(@p features) relu3 fc2(5)) trained for
 * one short epoch on the images of classes 0..4 among the first 6,000 training images. */
tlearn_model *example_pretrain(const fmnist *train, int features);

#endif
