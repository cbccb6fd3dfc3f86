"""The built-in formats (embedhub, sentence-transformers, open_clip, transformers CLIP); each module
defines one :class:`embedhub.formats.Format` subclass and its instance ``FORMAT``, registered by
:mod:`embedhub.formats`."""
