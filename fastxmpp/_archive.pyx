# cython: language_level=3
"""The archive writer's work per row, compiled (storage/mam.py `ArchiveCommit.work`).

The event loop waits while the writer thread makes a commit's puts (the hand-over of
modules/mam.py: the GIL is not traded between two busy threads for each put), so every
microsecond of a row here is a microsecond of the loop's wait too, at every message archived
twice. What stays in Python is per commit, not per row. A stored record is msgpack
`[time, with, direction, serialized message]`, written here as msgpack-python's `packb`
writes it (float64, str, bin), so the stores' readers (`msgpack.unpackb`) read it unchanged.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef union _Double:
    double value
    uint64_t bits


cdef inline char *_big_endian(char *out, uint64_t value, int size):
    cdef int i
    for i in range(size):
        out[size - 1 - i] = <char>(value & 0xFF)
        value >>= 8
    return out + size


cdef inline Py_ssize_t _str_header_size(Py_ssize_t n):
    return 1 if n < 32 else 2 if n <= 0xFF else 3 if n <= 0xFFFF else 5


cdef inline char *_str_header(char *out, Py_ssize_t n):
    if n < 32:
        out[0] = <char>(0xA0 | n)
        return out + 1
    if n <= 0xFF:
        out[0] = <char>0xD9
        return _big_endian(out + 1, n, 1)
    if n <= 0xFFFF:
        out[0] = <char>0xDA
        return _big_endian(out + 1, n, 2)
    out[0] = <char>0xDB
    return _big_endian(out + 1, n, 4)


cdef inline Py_ssize_t _bin_header_size(Py_ssize_t n):
    return 2 if n <= 0xFF else 3 if n <= 0xFFFF else 5


cdef inline char *_bin_header(char *out, Py_ssize_t n):
    if n <= 0xFF:
        out[0] = <char>0xC4
        return _big_endian(out + 1, n, 1)
    if n <= 0xFFFF:
        out[0] = <char>0xC5
        return _big_endian(out + 1, n, 2)
    out[0] = <char>0xC6
    return _big_endian(out + 1, n, 4)


cdef bytes _record(bytes head, double when, str with_, str direction, bytes xml):
    """`head` followed by the record's msgpack bytes."""
    cdef bytes peer = with_.encode(), way = direction.encode()
    cdef Py_ssize_t n_head = PyBytes_GET_SIZE(head), n_peer = PyBytes_GET_SIZE(peer)
    cdef Py_ssize_t n_way = PyBytes_GET_SIZE(way), n_xml = PyBytes_GET_SIZE(xml)
    if n_xml > 0xFFFFFFFF or n_peer > 0xFFFFFFFF:
        raise ValueError("an archived message of 4 GiB")
    cdef Py_ssize_t size = (n_head + 1 + 9 + _str_header_size(n_peer) + n_peer
                            + _str_header_size(n_way) + n_way + _bin_header_size(n_xml) + n_xml)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *at = PyBytes_AS_STRING(out)
    cdef _Double number
    memcpy(at, PyBytes_AS_STRING(head), n_head)
    at += n_head
    at[0] = <char>0x94  # an array of four
    at[1] = <char>0xCB  # float 64
    number.value = when
    at = _big_endian(at + 2, number.bits, 8)
    at = _str_header(at, n_peer)
    memcpy(at, PyBytes_AS_STRING(peer), n_peer)
    at = _str_header(at + n_peer, n_way)
    memcpy(at, PyBytes_AS_STRING(way), n_way)
    at = _bin_header(at + n_way, n_xml)
    memcpy(at, PyBytes_AS_STRING(xml), n_xml)
    return out


def record_value(double when, str with_, str direction, bytes xml):
    """A record as stored: msgpack [when, with_, direction, xml]."""
    return _record(b"", when, with_, direction, xml)


cdef bytes _key(bytes prefix, uint64_t number):
    """`prefix` and the id's 8 bytes, big-endian (the archive's and the journal's keys)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 8)
    cdef char *at = PyBytes_AS_STRING(out)
    memcpy(at, PyBytes_AS_STRING(prefix), n)
    _big_endian(at + n, number, 8)
    return out


cdef bint _put_archived(object archive_put, bytes prefix, uint64_t number, bytes value,
                        list stats, object on_duplicate) except -1:
    """A row into its account's archive (`archive_put`: a cursor's put on it); `stats`
    ([count, newest value]) follows."""
    # Positional: dupdata=True, overwrite=False (py-lmdb's keyword parsing was a third of a
    # put's cost).
    if not archive_put(_key(prefix, number), value, True, False):
        on_duplicate("archive id %016x under %r exists: not overwritten", number, prefix)
        return False
    stats[0] += 1
    stats[1] = value
    return True


def fold_tail(archive_put, bytes prefix, list tail, list stats, on_duplicate):
    """An account's journaled rows ([id, value, id, value, ...]) into its archive."""
    cdef Py_ssize_t index
    for index in range(0, len(tail), 2):
        _put_archived(archive_put, prefix, tail[index], tail[index + 1], stats, on_duplicate)


def put_rows(list rows, dict folded, journal_put, archive_put, list journaled, on_duplicate):
    """A commit's new rows: those of the accounts in `folded` (prefix -> [count, newest
    value]) into their archives, the others into the journal (key: the id; value: the
    account prefix with its length, then the record), each appended to `journaled` as
    prefix, id, record. Returns the highest id (0: no rows)."""
    cdef uint64_t highest = 0, number
    cdef dict heads = {}
    cdef bytes prefix, head, value, stored
    cdef list fold
    cdef tuple row
    cdef Py_ssize_t n
    for row in rows:
        prefix = row[0]
        number = row[1]
        if number > highest:
            highest = number
        fold = folded.get(prefix)
        if fold is not None:
            _put_archived(archive_put, prefix, number, _record(b"", row[2], row[3], row[4], row[5]),
                          fold, on_duplicate)
            continue
        head = heads.get(prefix)
        if head is None:
            n = PyBytes_GET_SIZE(prefix)
            if n > 0xFFFF:
                raise ValueError("an account prefix of 64 KiB")
            head = PyBytes_FromStringAndSize(NULL, 2 + n)
            _big_endian(PyBytes_AS_STRING(head), n, 2)
            memcpy(PyBytes_AS_STRING(head) + 2, PyBytes_AS_STRING(prefix), n)
            heads[prefix] = head
        stored = _record(head, row[2], row[3], row[4], row[5])
        key = _key(b"", number)
        # Ids only grow: each row goes after the journal's last (MDB_APPEND fills pages); a
        # row that does not (a clock stepped back) is put in its place. (Positional:
        # dupdata, overwrite, append.)
        if not journal_put(key, stored, True, True, True) and not journal_put(
            key, stored, True, False
        ):
            on_duplicate("archive journal id %016x exists: not overwritten", number)
            continue
        n = PyBytes_GET_SIZE(head)
        value = PyBytes_FromStringAndSize(PyBytes_AS_STRING(stored) + n,
                                          PyBytes_GET_SIZE(stored) - n)
        journaled += (prefix, number, value)
    return highest


def trim_journal(cursor, end):
    """The journal's rows from its start up to `end` (a key; None: all) deleted."""
    if not cursor.first():
        return
    while True:
        key = cursor.key()
        if not key or (end is not None and key >= end):
            return
        cursor.delete()  # moves to the next row (b"" past the last one)
