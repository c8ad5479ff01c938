/* lake._routes: a JSON array of numbers and nulls, parsed straight into a buffer of doubles.
 *
 * parse(buffer) -> (values: bytes, validity: bytes | None, null_count: int) | None
 *
 * values holds one native double per element (nulls as 0.0) and validity Arrow's bitmap (bit i
 * of byte i/8 set for a value, absent when there is no null), so that lake/routes.py wraps them
 * as a float64 array without copying. None for anything else (a string, a nested value, a
 * number a double cannot hold, text that is not JSON): the caller then reads the array the slow
 * way, which names what is wrong and where.
 *
 * Values are those msgspec gives, bit for bit: a number of at most 19 significant digits whose
 * mantissa fits in 53 bits and whose power of ten is at most 22 is exact as one IEEE
 * multiplication or division (Clinger's fast path: both operands are exact, so the one rounding
 * is correct); any other number goes through a correctly rounded conversion of its text: glibc's
 * strtod_l in the C locale (1.8x faster than the next one on 17-digit decimals), or Python's own
 * (PyOS_string_to_double, what float() uses) elsewhere. "-0" is an integer, 0.0, as in msgspec;
 * "-0.0" and "-0e0" are -0.0.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strtod_l */
#endif
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <locale.h>
static locale_t C_NUMERIC; /* made once at import; (locale_t)0: Python's conversion instead */
#endif

static const double POW10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define SLOW_MAX 512 /* longer number tokens are left to the caller */
#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#define FAST_PATH 0 /* x87 arithmetic rounds twice: Clinger's path would not be exact */
#else
#define FAST_PATH 1
#endif

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

static inline const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* One JSON number at p: the position after it, or NULL (not a number, or beyond a double). */
static const char *number(const char *p, const char *e, double *out) {
    const char *start = p;
    int neg = 0, digits = 0, exp10 = 0, is_int = 1;
    uint64_t m = 0;
    if (p < e && *p == '-') { neg = 1; p++; }
    if (p >= e || !is_digit(*p)) return NULL;
    if (*p == '0') p++;
    else for (; p < e && is_digit(*p); p++) {
        if (digits < 19) m = m * 10 + (uint64_t)(*p - '0'), digits++;
        else exp10++, digits++;
    }
    if (p < e && *p == '.') {
        is_int = 0;
        if (++p >= e || !is_digit(*p)) return NULL;
        for (; p < e && is_digit(*p); p++) {
            if (m == 0 && *p == '0') { exp10--; continue; }  /* leading zeros: not significant */
            if (digits < 19) m = m * 10 + (uint64_t)(*p - '0'), digits++, exp10--;
            else digits++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0, ev = 0;
        is_int = 0;
        if (++p < e && (*p == '+' || *p == '-')) eneg = (*p++ == '-');
        if (p >= e || !is_digit(*p)) return NULL;
        for (; p < e && is_digit(*p); p++) if (ev < 100000) ev = ev * 10 + (*p - '0');
        exp10 += eneg ? -ev : ev;
    }
    if (m == 0) {
        *out = (neg && !is_int) ? -0.0 : 0.0;
    } else if (FAST_PATH && digits <= 19 && m <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)m;
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
        *out = neg ? -v : v;
    } else {
        char buf[SLOW_MAX + 1];
        char *end;
        size_t len = (size_t)(p - start);
        if (len > SLOW_MAX) return NULL;
        memcpy(buf, start, len);
        buf[len] = '\0';
        double v;
#ifdef __GLIBC__
        if (C_NUMERIC != (locale_t)0) {
            v = strtod_l(buf, &end, C_NUMERIC);
        } else
#endif
        {
            v = PyOS_string_to_double(buf, &end, NULL);
            if (v == -1.0 && PyErr_Occurred()) { PyErr_Clear(); return NULL; }
        }
        if (end != buf + len) return NULL;
        if (isinf(v)) return NULL;  /* beyond a double: the caller names it */
        *out = v;
    }
    return p;
}

static PyObject *parse(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_buffer view;
    PyObject *values = NULL, *validity = NULL;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const char *p = view.buf, *e = p + view.len;
    Py_ssize_t cap = 1, n = 0, nulls = 0;
    for (const char *c = p; c < e; c++) cap += (*c == ',');  /* vectorised: no call per comma */
    p = skip_ws(p, e);
    if (p >= e || *p++ != '[') goto other;
    p = skip_ws(p, e);
    if (p < e && *p == ']') cap = 0;
    values = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(double));
    if (values == NULL) goto error;
    double *out = (double *)PyBytes_AS_STRING(values);
    while (n < cap) {
        p = skip_ws(p, e);
        if (e - p >= 4 && memcmp(p, "null", 4) == 0) {
            if (validity == NULL) {
                validity = PyBytes_FromStringAndSize(NULL, (cap + 7) / 8);
                if (validity == NULL) goto error;
                memset(PyBytes_AS_STRING(validity), 0xFF, (size_t)((cap + 7) / 8));
            }
            PyBytes_AS_STRING(validity)[n / 8] &= (char)~(1 << (n % 8));
            out[n] = 0.0;
            nulls++;
            p += 4;
        } else if ((p = number(p, e, &out[n])) == NULL) {
            goto other;
        }
        n++;
        p = skip_ws(p, e);
        if (p < e && *p == ',' && n < cap) p++;
        else break;
    }
    if (n != cap || p >= e || *p++ != ']' || skip_ws(p, e) != e) goto other;
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNn)", values, validity ? validity : Py_NewRef(Py_None), nulls);
other:
    Py_XDECREF(values);
    Py_XDECREF(validity);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
error:
    Py_XDECREF(values);
    Py_XDECREF(validity);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef METHODS[] = {
    {"parse", parse, METH_O, "parse(buffer) -> (doubles, validity bitmap or None, null count), or None "
                             "when the buffer is not a JSON array of numbers and nulls"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "lake._routes", .m_size = -1, .m_methods = METHODS,
    .m_doc = "JSON number arrays into buffers of doubles (see lake/routes.py).",
};

PyMODINIT_FUNC PyInit__routes(void) {
#ifdef __GLIBC__
    C_NUMERIC = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
#endif
    return PyModule_Create(&MODULE);
}
