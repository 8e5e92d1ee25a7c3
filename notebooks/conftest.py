"""nbval settings for the teaching notebooks (`make test` runs ``pytest notebooks/solutions --nbval-lax``).

The solution notebooks in notebooks/solutions/ are the ones tested: their exercise cells hold the reference
solutions, so every check cell runs. The student copies in notebooks/ have blank exercises whose checks fail
by design, so they are never collected (``collect_ignore_glob`` matches only files directly in notebooks/).

With --nbval-lax only cells marked ``# NBVAL_CHECK_OUTPUT`` have their outputs compared; every other
cell just has to run. For the marked cells we still never compare:

* text/html, application/javascript: HTML views (bertviz, megabert_edu.viz) carry random element ids;
* widget views: ipywidgets outputs carry random model ids;
* stderr: warnings and progress bars differ between machines and library versions;
* images: nbval skips them already unless --nbval-current-env ... (listed here to be explicit).
"""

collect_ignore_glob = ["[0-9][0-9]_*.ipynb"]  # the student copies; notebooks/solutions/ is a subfolder

SKIP = (
    "text/html",
    "application/javascript",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
    "stderr",
    "image/png",
    "image/svg+xml",
)


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += SKIP
