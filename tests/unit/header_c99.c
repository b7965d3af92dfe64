/* The public header compiles on its own as strict C99 (-std=c99 -pedantic -Werror -Wall
 * -Wextra) and its version macros agree with the running library. Included first, before
 * any system header, so that a missing include inside tlearn.h breaks the build. */
#include <tlearn/tlearn.h>
#include <tlearn/tlearn.h> /* include guard */

#include <stdio.h>
#include <string.h>

int main(void)
{
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", TLEARN_VERSION_MAJOR, TLEARN_VERSION_MINOR,
             TLEARN_VERSION_PATCH);
    if (tlearn_version_hex() != (unsigned)TLEARN_VERSION_HEX ||
        strcmp(tlearn_version_string(), expect) != 0) {
        fprintf(stderr, "version mismatch: %x %s vs %x %s\n", tlearn_version_hex(),
                tlearn_version_string(), (unsigned)TLEARN_VERSION_HEX, expect);
        return 1;
    }
    tlearn_model *m = NULL;
    tlearn_model_destroy(&m); /* a C99 caller can use handles */
    return 0;
}
