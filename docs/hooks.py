"""MkDocs hook: publishes the benchmark plots under ``results/`` without copying them into docs/.

The pages link the plots as ``../benchmarks/results/NAME.png``, which resolves when the
Markdown is read in the repository; on the site the same links point to ``results/``.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY_LINK = "](../benchmarks/results/"
SITE_LINK = "](results/"


def on_files(files, config):
  for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
    files.append(File(f"results/{png.name}", str(ROOT / "benchmarks"), config["site_dir"],
                      config["use_directory_urls"]))
  return files


def on_page_markdown(markdown, page, config, files):
  return markdown.replace(REPOSITORY_LINK, SITE_LINK)
