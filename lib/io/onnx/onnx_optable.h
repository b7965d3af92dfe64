/* The ONNX operator table seen without protobuf types: tests/onnx checks doc/onnx.md
 * against it (test_onnx_optable.c). */
#ifndef TL_ONNX_OPTABLE_H
#define TL_ONNX_OPTABLE_H

#include <stddef.h>

/* Line @p i of the operator table (an op type may have several lines for different
 * opsets): 1 and its fields, or 0 past the end. */
int ox_op_info(size_t i, const char **op_type, int *min_opset, int *max_opset,
               const char **limits);

#endif
