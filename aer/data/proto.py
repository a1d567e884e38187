"""TensorFlow's `SequenceExample` messages, built with protobuf's own descriptor API.

The wire format is what the AudioSet release uses (tensorflow/core/example/{feature,example}.proto).
Building the descriptors at import time keeps TensorFlow and generated `_pb2` files out of aer.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "aer.tfexample"
_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None, oneof=None, packed=False):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof
    if packed:
        f.options.packed = True
    return f


def _map(msg, field_name, entry_name, value_type):
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=value_type)
    f = msg.field.add(name=field_name, number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED)
    f.type_name = f".{_PACKAGE}.{msg.name}.{entry_name}"


def _build():
    fd = descriptor_pb2.FileDescriptorProto(name="aer/tfexample.proto", package=_PACKAGE, syntax="proto3")
    rep = _F.LABEL_REPEATED
    _field(fd.message_type.add(name="BytesList"), "value", 1, _F.TYPE_BYTES, rep)
    _field(fd.message_type.add(name="FloatList"), "value", 1, _F.TYPE_FLOAT, rep, packed=True)
    _field(fd.message_type.add(name="Int64List"), "value", 1, _F.TYPE_INT64, rep, packed=True)
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    _field(feature, "bytes_list", 1, _F.TYPE_MESSAGE, type_name="BytesList", oneof=0)
    _field(feature, "float_list", 2, _F.TYPE_MESSAGE, type_name="FloatList", oneof=0)
    _field(feature, "int64_list", 3, _F.TYPE_MESSAGE, type_name="Int64List", oneof=0)
    _map(fd.message_type.add(name="Features"), "feature", "FeatureEntry", "Feature")
    _field(fd.message_type.add(name="FeatureList"), "feature", 1, _F.TYPE_MESSAGE, rep, type_name="Feature")
    _map(fd.message_type.add(name="FeatureLists"), "feature_list", "FeatureListEntry", "FeatureList")
    seq = fd.message_type.add(name="SequenceExample")
    _field(seq, "context", 1, _F.TYPE_MESSAGE, type_name="Features")
    _field(seq, "feature_lists", 2, _F.TYPE_MESSAGE, type_name="FeatureLists")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in ("Feature", "SequenceExample")}


_CLASSES = _build()
Feature = _CLASSES["Feature"]
SequenceExample = _CLASSES["SequenceExample"]
