"""Files on disk: atomic writes (:mod:`.atomic`), the record of written files (:mod:`.manifest`), reads that stay
inside a model folder (:mod:`.folder`), file hashes (:mod:`.hashing`) and lazy package exports (:mod:`.lazy`).
Private to the library; the public names are re-exported by :mod:`embedhub.store` and :mod:`embedhub.formats`."""
