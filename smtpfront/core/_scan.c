/* smtpfront.core._scan: the bare-line-ending check of the DATA streamer, in C.
 *
 * has_bare_ending(buffer) -> bool: True when the buffer holds a CR or LF that is not part
 * of a CRLF pair (RFC 5321 section 2.3.8). Same answer as the pure-Python version in
 * data.py; eight octets at a time, so most of a text body is skipped a word per step.
 * Accepts any C-contiguous buffer (bytes, bytearray, memoryview): no copy is made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero when some octet of w equals b (exact as a yes/no answer). */
static inline uint64_t has_octet(uint64_t w, uint64_t b) {
    uint64_t x = w ^ (ONES * b);
    return (x - ONES) & ~x & HIGHS;
}

static int bare_in(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(has_octet(w, '\r') | has_octet(w, '\n'))) {
                i += 8;
                continue;
            }
        }
        Py_ssize_t stop = i + 8 < n ? i + 8 : n;
        for (; i < stop; i++) {
            unsigned char c = p[i];
            if (c == '\r') {
                if (i + 1 >= n || p[i + 1] != '\n')
                    return 1;
                i++; /* the LF of this pair */
            } else if (c == '\n') {
                return 1; /* not preceded by the CR of a pair */
            }
        }
    }
    return 0;
}

static PyObject *has_bare_ending(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    int bare = bare_in((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyBool_FromLong(bare);
}

static PyMethodDef methods[] = {
    {"has_bare_ending", has_bare_ending, METH_O,
     "True when the buffer holds a CR or LF that is not part of a CRLF pair."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "smtpfront.core._scan", "Compiled scans for the DATA streamer.", -1, methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
