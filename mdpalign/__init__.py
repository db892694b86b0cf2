"""mdpalign: LLM alignment objectives proven on exactly solved MDPs, then applied to real models."""
from mdpalign.errors import MdpalignError
from mdpalign.mdp import InvalidMDPError, TabularMDP

__version__ = "0.1.0"
__all__ = ["MdpalignError", "TabularMDP", "InvalidMDPError", "__version__"]
