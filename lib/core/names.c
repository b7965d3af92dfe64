/* Layer names and the glob patterns that select them. */
#include <string.h>

#include "core.h"

static int class_match(const char **pp, char c)
{
    const char *p = *pp + 1; /* after '[' */
    int negate = (*p == '!' || *p == '^');
    if (negate)
        p++;
    int matched = 0;
    int first = 1;
    while (*p && (*p != ']' || first)) {
        if (p[1] == '-' && p[2] && p[2] != ']') {
            if (c >= p[0] && c <= p[2])
                matched = 1;
            p += 3;
        } else {
            if (c == *p)
                matched = 1;
            p++;
        }
        first = 0;
    }
    if (*p != ']')
        return -1; /* unterminated class: treat '[' literally */
    *pp = p + 1;
    return matched != negate;
}

int tl_glob_match(const char *pat, const char *s)
{
    const char *star_p = NULL, *star_s = NULL;
    while (*s) {
        if (*pat == '*') {
            star_p = ++pat;
            star_s = s;
            continue;
        }
        if (*pat == '[') {
            const char *q = pat;
            int r = class_match(&q, *s);
            if (r == 1) {
                pat = q;
                s++;
                continue;
            }
            if (r == -1 && *s == '[') {
                pat++;
                s++;
                continue;
            }
        } else if (*pat && (*pat == '?' || *pat == *s)) {
            pat++;
            s++;
            continue;
        }
        if (!star_p)
            return 0;
        pat = star_p;
        s = ++star_s;
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

int tl_check_name(const char *fn, const char *name)
{
    if (!name)
        return tl_fail(TLEARN_EINVAL, "%s: name is NULL", fn);
    size_t n = strlen(name);
    if (n == 0 || n >= TL_NAME_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: name '%.80s' must be 1..%d bytes", fn, name,
                       TL_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c >= 127 || c == '*' || c == '?' || c == '[' || c == ']')
            return tl_fail(TLEARN_EINVAL,
                           "%s: name '%s' has a character that is not allowed at byte %zu "
                           "(printable ASCII without space and * ? [ ])", fn, name, i);
    }
    return TLEARN_OK;
}
