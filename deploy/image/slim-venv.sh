#!/bin/sh
# Trims an installed runtime virtualenv for the production image (the Dockerfile runs it; `make image-size`
# runs it on a local copy to measure). Removes only what the services never load:
#  - google-api-python-client's discovery documents of the ~600 Google APIs except Gmail's (the Gmail adapter
#    builds its client from the bundled gmail.v1.json alone), about 110 MB;
#  - pip and setuptools (nothing installs packages at run time).
set -eu
venv="$1"
site="$(echo "$venv"/lib/python3*/site-packages)"
find "$site/googleapiclient/discovery_cache/documents" -type f ! -name gmail.v1.json -delete
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools
