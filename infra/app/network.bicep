// Private networking (vnetEnabled), as Microsoft's Flex Consumption quickstarts do it: a virtual network
// with a subnet delegated to Microsoft.App/environments for the Function App's VNet integration and a
// subnet for private endpoints; private endpoints for the storage account's blob and table services and,
// with the webhook sink, for the Key Vault; one private DNS zone per service, linked to the network, so
// the app resolves the services' usual names to their private addresses. The services themselves then
// turn public network access off (storage.bicep, webhook-secret.bicep).

@description('Name of the virtual network.')
param name string

@description('Region of the network and the private endpoints (the app\'s region).')
param location string

@description('Tags for the network resources.')
param tags object = {}

@description('Address space of the network.')
param addressPrefix string = '10.42.0.0/16'

@description('Subnet for the Function App\'s VNet integration (delegated to Microsoft.App/environments).')
param appSubnetPrefix string = '10.42.1.0/24'

@description('Subnet for the private endpoints.')
param privateEndpointSubnetPrefix string = '10.42.2.0/24'

@description('Storage account that gets blob and table private endpoints.')
param storageAccountName string

@description('Key Vault that gets a private endpoint; empty when the webhook sink is off.')
param keyVaultName string = ''

var appSubnetName = 'app'
var privateEndpointSubnetName = 'private-endpoints'

// The detector calls public Azure APIs (Log Analytics query, Resource Manager, Logs Ingestion, Entra ID,
// Application Insights) from the app subnet, so it keeps outbound access; nothing inbound reaches it.
// Subnets created now are private by default (no default outbound access): put a NAT gateway or your hub's
// firewall on the app subnet if your policy forbids default outbound access (docs/deploy.md).
resource appSubnetSecurity 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-${appSubnetName}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'deny-all-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource privateEndpointSubnetSecurity 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-${privateEndpointSubnetName}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-app-subnet-https'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: appSubnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: privateEndpointSubnetPrefix
          destinationPortRange: '443'
        }
      }
      {
        name: 'deny-all-inbound'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource network 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          networkSecurityGroup: {
            id: appSubnetSecurity.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments' // the delegation Flex Consumption VNet integration uses
              }
            }
          ]
          defaultOutboundAccess: true
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          networkSecurityGroup: {
            id: privateEndpointSubnetSecurity.id
          }
          privateEndpointNetworkPolicies: 'Enabled' // the NSG above applies to the private endpoints
          defaultOutboundAccess: false
        }
      }
    ]
  }

  resource appSubnet 'subnets' existing = {
    name: appSubnetName
  }

  resource privateEndpointSubnet 'subnets' existing = {
    name: privateEndpointSubnetName
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (!empty(keyVaultName)) {
  name: keyVaultName
}

// (service, private DNS zone, target resource id). Key Vault's zone has no suffix in environment(), so the
// public cloud's is written out; sovereign clouds use privatelink.vaultcore.usgovcloudapi.net and the like.
var storageEndpoints = [
  {
    groupId: 'blob'
    zone: 'privatelink.blob.${environment().suffixes.storage}'
  }
  {
    groupId: 'table'
    zone: 'privatelink.table.${environment().suffixes.storage}'
  }
]
var vaultZone = 'privatelink.vaultcore.azure.net'

resource storageZones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for endpoint in storageEndpoints: {
    name: endpoint.zone
    location: 'global'
    tags: tags
  }
]

resource storageZoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (endpoint, i) in storageEndpoints: {
    parent: storageZones[i]
    name: '${name}-link'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: network.id
      }
    }
  }
]

resource storagePrivateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for (endpoint, i) in storageEndpoints: {
    name: '${storageAccountName}-${endpoint.groupId}-pe'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: network::privateEndpointSubnet.id
      }
      privateLinkServiceConnections: [
        {
          name: '${storageAccountName}-${endpoint.groupId}'
          properties: {
            privateLinkServiceId: storage.id
            groupIds: [
              endpoint.groupId
            ]
          }
        }
      ]
    }
  }
]

resource storageZoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (endpoint, i) in storageEndpoints: {
    parent: storagePrivateEndpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: replace(endpoint.zone, '.', '-')
          properties: {
            privateDnsZoneId: storageZones[i].id
          }
        }
      ]
    }
  }
]

resource vaultZoneResource 'Microsoft.Network/privateDnsZones@2024-06-01' = if (!empty(keyVaultName)) {
  name: vaultZone
  location: 'global'
  tags: tags
}

resource vaultZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = if (!empty(keyVaultName)) {
  parent: vaultZoneResource
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: network.id
    }
  }
}

resource vaultPrivateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = if (!empty(keyVaultName)) {
  name: '${keyVaultName}-vault-pe'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: network::privateEndpointSubnet.id
    }
    privateLinkServiceConnections: [
      {
        name: '${keyVaultName}-vault'
        properties: {
          privateLinkServiceId: vault.id
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

resource vaultZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = if (!empty(keyVaultName)) {
  parent: vaultPrivateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: replace(vaultZone, '.', '-')
        properties: {
          privateDnsZoneId: vaultZoneResource.id
        }
      }
    ]
  }
}

output appSubnetId string = network::appSubnet.id
output privateEndpointSubnetId string = network::privateEndpointSubnet.id
