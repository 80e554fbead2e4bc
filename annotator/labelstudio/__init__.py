"""Everything that talks to Label Studio, one job a module.

- :mod:`.server`: the ``label-studio`` server process bookcounter starts (own venv, loopback).
- :mod:`.client`: the SDK client and the failures a person is told about.
- :mod:`.label_config`: the project's labelling config and the names in it.
- :mod:`.project`: the project, its tasks, and the photos uploaded into its media store.
- :mod:`.ml_backend_link`: connecting the interactive ML backend to the project.
- :mod:`.mask_codec`: masks to and from Label Studio's brush and polygon results.

Photos are *uploaded* to Label Studio (its own media store), not served through local-file
storage: the server then needs no access to our folders (it works the same when it runs
elsewhere or on PostgreSQL), and every consumer (editor, ML backend, collect) fetches the very
same bytes through one authenticated URL.
"""
