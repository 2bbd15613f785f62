_base_ = ['./_base_/upernet_poolformer_ade20k_160k.py']
