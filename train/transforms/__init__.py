"""Image transforms, one module each: every side of a transform (tf.data, DALI, predict) together.

detrec.train.registry names them (`TRANSFORMS`) and states what a module must define
(`Transform`); the input lines and predict reach a transform only through it, so adding one
touches its module and the registry's line.
"""
