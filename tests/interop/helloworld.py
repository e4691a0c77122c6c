"""helloworld.Greeter's two messages, encoded by hand so grpcio alone is enough (no protobuf, no
grpcio-tools): both are a single string field number 1."""


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(text):
    """HelloRequest{name} or HelloReply{message}."""
    data = text.encode("utf-8")
    return (b"\x0a" + _varint(len(data)) + data) if data else b""


def decode(buf):
    """The string in field 1, skipping any other field."""
    i, text = 0, ""
    while i < len(buf):
        key, shift = 0, 0
        while True:
            byte = buf[i]
            i += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        wire = key & 7
        if wire == 0:
            while buf[i] & 0x80:
                i += 1
            i += 1
            continue
        if wire != 2:
            raise ValueError(f"unexpected wire type {wire}")
        length, shift = 0, 0
        while True:
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key >> 3 == 1:
            text = buf[i : i + length].decode("utf-8")
        i += length
    return text
