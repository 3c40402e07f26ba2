"""A stand-in for the `sentencepiece` module where it is not installed (the GPU image): reads a SentencePiece
tokenizer.model (a serialized ModelProto) and answers what llama.cpp's converter asks of a vocabulary: its size,
each piece's text, score and type. It does not tokenize. bench/gpu_serve.sh puts this folder on PYTHONPATH only
when `import sentencepiece` fails; tests/peers/spm_reader_check.py compares it with the real module.

ModelProto: field 1 = repeated SentencePiece {1: piece (string), 2: score (float), 3: type (enum, default
NORMAL)}; types NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6. Other fields are skipped.
"""
import struct

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _varint(buf, pos):
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of each field of a message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
        yield field, wire, value


class SentencePieceProcessor:
    def __init__(self, model_file=None):
        self._pieces = []  # (text, score, type)
        if model_file is not None:
            self.LoadFromFile(model_file)

    def LoadFromFile(self, path):
        with open(path, "rb") as f:
            data = f.read()
        self._pieces = []
        for field, wire, value in _fields(data):
            if field != 1 or wire != 2:
                continue
            text, score, kind = "", 0.0, NORMAL
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 2:
                    text = v2.decode("utf-8")
                elif f2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif f2 == 3 and w2 == 0:
                    kind = v2
            self._pieces.append((text, score, kind))
        return True

    Load = LoadFromFile

    def vocab_size(self):
        return len(self._pieces)

    GetPieceSize = vocab_size

    def IdToPiece(self, i):
        return self._pieces[i][0]

    id_to_piece = IdToPiece

    def GetScore(self, i):
        return self._pieces[i][1]

    def IsUnknown(self, i):
        return self._pieces[i][2] == UNKNOWN

    def IsControl(self, i):
        return self._pieces[i][2] == CONTROL

    def IsUnused(self, i):
        return self._pieces[i][2] == UNUSED

    def IsByte(self, i):
        return self._pieces[i][2] == BYTE
