"""What a model learns to answer, one module per task (detrec.train.registry.TASKS).

* classify: the class of the image's largest object (background when it has none).
* localize: that class and the object's box, scored as the ILSVRC localisation task is.

A task owns its head on the backbone's pooled features, its loss and its evaluation sums;
the models, the steps and the trainer ask it and never compare its name.
"""
