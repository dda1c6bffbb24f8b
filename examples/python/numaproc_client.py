"""Calls sys_echo on a numaproc server through libnumaproc_client.so, with ctypes.

    NUMAPROC_CLIENT_LIB=target/release/libnumaproc_client.so \\
        python3 examples/python/numaproc_client.py NAME [RUNTIME_DIR]
"""
import ctypes, os, sys
from ctypes import POINTER, byref, c_char_p, c_size_t, c_uint32, c_void_p

class Error(ctypes.Structure):  # numaproc_client_error
    _fields_ = [("status", c_uint32), ("code", c_uint32), ("message", ctypes.c_char * 512)]

lib = ctypes.CDLL(os.environ.get("NUMAPROC_CLIENT_LIB", "libnumaproc_client.so"))
lib.numaproc_client_connect.argtypes = [c_char_p, c_char_p, c_uint32, POINTER(Error)]
lib.numaproc_client_connect.restype = c_void_p
lib.numaproc_client_output_capacity.argtypes, lib.numaproc_client_output_capacity.restype = [c_void_p], c_size_t
lib.numaproc_client_call.argtypes = [c_void_p, c_char_p, c_char_p, c_size_t, c_void_p, c_size_t, POINTER(c_size_t), POINTER(Error)]
lib.numaproc_client_status_str.restype = c_char_p
lib.numaproc_client_disconnect.argtypes = [c_void_p]

err = Error()
client = lib.numaproc_client_connect(sys.argv[1].encode(), sys.argv[2].encode() if len(sys.argv) > 2 else None, 0, byref(err))
if not client:
    sys.exit(f"connect: {err.message.decode()}")
out, n, text = ctypes.create_string_buffer(lib.numaproc_client_output_capacity(client)), c_size_t(), b"hello from Python"
status = lib.numaproc_client_call(client, b"sys_echo", text, len(text), out, len(out), byref(n), byref(err))
lib.numaproc_client_disconnect(client)
if status != 0:
    sys.exit(f"sys_echo: {lib.numaproc_client_status_str(status).decode()}: {err.message.decode()}")
print("sys_echo:", out.raw[: n.value].decode())
