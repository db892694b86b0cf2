"""``python -m mdpalign.llm_bridge ...`` is ``mdpalign train ...`` (also under ``accelerate launch -m
mdpalign.llm_bridge``): the same options, and a mistake in the config, its paths or the data is one line and exit
status 2 (the ``mdpalign`` command's error handling)."""
import sys

from mdpalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
