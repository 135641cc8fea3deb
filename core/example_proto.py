"""`tf.train.Example` as a protobuf message class, without TensorFlow.

Built at import from a descriptor that repeats the field numbers and types of TensorFlow's
example.proto and feature.proto, in a private descriptor pool (so it never clashes with
TensorFlow's own registration when both are loaded). Reading a record then needs only the
protobuf runtime, which the inspector and the schema's decoder use; parsing semantics are
protobuf's own, so they cannot drift from TensorFlow's (tests/test_schema.py compares them).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "detrec.tf"


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, *fields: tuple) -> descriptor_pb2.DescriptorProto:
    msg = file.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = msg.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = f".{_PACKAGE}.{type_name}"
    return msg


def _build():
    file = descriptor_pb2.FileDescriptorProto(name="detrec/tf_example.proto", package=_PACKAGE, syntax="proto3")
    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    _message(file, "BytesList", ("value", 1, _F.TYPE_BYTES, rep, None))
    _message(file, "FloatList", ("value", 1, _F.TYPE_FLOAT, rep, None))
    _message(file, "Int64List", ("value", 1, _F.TYPE_INT64, rep, None))
    feature = _message(file, "Feature", ("bytes_list", 1, _F.TYPE_MESSAGE, opt, "BytesList"),
                       ("float_list", 2, _F.TYPE_MESSAGE, opt, "FloatList"),
                       ("int64_list", 3, _F.TYPE_MESSAGE, opt, "Int64List"))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = _message(file, "Features", ("feature", 1, _F.TYPE_MESSAGE, rep, "Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=f".{_PACKAGE}.Feature")
    _message(file, "Example", ("features", 1, _F.TYPE_MESSAGE, opt, "Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Example"))


Example = _build()
