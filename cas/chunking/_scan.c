/* The window chunker's scan (spec/format.md §7.6), in C: an optional accelerator.
 *
 * first_below(buf, start, n, stride, threshold) -> int
 *
 * The blocks of ``stride`` bytes of buf[start:n] (whole blocks only:
 * (n - start) // stride of them) are searched, in order, for the first whose
 * first four bytes, read as a big-endian integer, are below ``threshold``;
 * its index is returned, or -1 when none is.  The GIL is released for a
 * long scan, so other threads of the process run meanwhile.
 *
 * cas/chunking/chunker.py falls back to its pure-Python search (identical
 * results) when this module was not built (no compiler at install time).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Below this many blocks, releasing and taking back the GIL costs more than the scan
 * (-DRELEASE_GIL_BLOCKS=N at build time overrides it, for measurements). */
#ifndef RELEASE_GIL_BLOCKS
#define RELEASE_GIL_BLOCKS 1024
#endif

static Py_ssize_t
scan(const unsigned char *p, Py_ssize_t count, Py_ssize_t stride, uint32_t top, uint64_t threshold)
{
    for (Py_ssize_t i = 0; i < count; i++, p += stride) {
        /* the first byte alone rejects almost every block */
        if (p[0] > top) {
            continue;
        }
        uint64_t v = ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
        if (v < threshold) {
            return i;
        }
    }
    return -1;
}

static PyObject *
first_below(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, n, stride;
    long long threshold;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nnnL:first_below", &view, &start, &n, &stride, &threshold)) {
        return NULL;
    }
    if (start < 0 || n < start || n > view.len) {
        PyErr_Format(PyExc_ValueError,
                     "first_below: need 0 <= start <= n <= len(buf), got start=%zd n=%zd len=%zd",
                     start, n, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (stride < 4) {
        PyErr_Format(PyExc_ValueError, "first_below: stride must be at least 4, got %zd", stride);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (threshold < 0 || threshold > (1LL << 32)) {
        PyErr_Format(PyExc_ValueError, "first_below: threshold must be in 0..2**32, got %lld",
                     threshold);
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t count = (n - start) / stride;
    Py_ssize_t found = -1;
    if (threshold > 0 && count > 0) {
        const unsigned char *p = (const unsigned char *)view.buf + start;
        /* the largest first byte a block below the threshold can have */
        uint32_t top = (uint32_t)((threshold - 1) >> 24);
        if (count >= RELEASE_GIL_BLOCKS) {
            Py_BEGIN_ALLOW_THREADS
            found = scan(p, count, stride, top, (uint64_t)threshold);
            Py_END_ALLOW_THREADS
        } else {
            found = scan(p, count, stride, top, (uint64_t)threshold);
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"first_below", first_below, METH_VARARGS,
     "first_below(buf, start, n, stride, threshold) -> int\n\n"
     "Index of the first block of `stride` bytes of buf[start:n] (whole blocks only) whose\n"
     "first four bytes, big-endian, are below `threshold` (0..2**32), or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "cas.chunking._scan",
    "The window chunker's scan in C (optional accelerator; spec/format.md §7.6).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
