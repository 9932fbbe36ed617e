"""The Siamese family, a method per file (train_siamese.py --method NAME): METHODS maps each name to its class."""
from ssl_scripts.methods.barlowtwins import BarlowTwins
from ssl_scripts.methods.byol import BYOL
from ssl_scripts.methods.contrastive import Contrastive
from ssl_scripts.methods.mocov2 import MoCoV2
from ssl_scripts.methods.simclr import SimCLR
from ssl_scripts.methods.simsiam import SimSiam
from ssl_scripts.methods.vicreg import VICReg

METHODS = {method.name: method for method in (Contrastive, SimCLR, SimSiam, BYOL, MoCoV2, BarlowTwins, VICReg)}
