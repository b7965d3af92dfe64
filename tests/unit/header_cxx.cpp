// The public header compiles on its own as C++11 (-pedantic -Werror -Wall -Wextra), with C
// linkage: the functions below link against the C library only if extern "C" is right.
#include <tlearn/tlearn.h>
#include <tlearn/tlearn.h> // include guard

#include <cstdio>
#include <cstring>

int main()
{
    tlearn_model *m = nullptr;
    if (tlearn_model_create(&m, 1, 2, 2) != TLEARN_OK)
        return 1;
    int rc = tlearn_model_add_dense(m, "fc", 3);
    int count = -1;
    if (rc == TLEARN_OK)
        rc = tlearn_model_layer_count(m, &count);
    tlearn_model_destroy(&m);
    if (rc != TLEARN_OK || count != 1 || m != nullptr) {
        std::fprintf(stderr, "C++ use of the API failed: %s\n", tlearn_errmsg());
        return 1;
    }
    if (tlearn_version_hex() != static_cast<unsigned>(TLEARN_VERSION_HEX) ||
        std::strcmp(tlearn_version_string(), TLEARN_VERSION_STRING) != 0)
        return 1;
    return 0;
}
